"""``restaurants``: serve the example API with uvicorn.

``uv run restaurants`` serves the FastAPI version on http://127.0.0.1:8000 against
``restaurants.db`` in the working directory, creating its tables and a few sample
rows on first start. ``DATABASE_URL=postgresql://...`` (or any ``DATABASE_*``
setting portside reads) switches the database with no other change.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from portside import ConfigurationError
from restaurants.setup import SEED_ENV, database_settings

__all__ = ["FRAMEWORKS", "main"]

#: The versions of the app, each in ``restaurants.<framework>_app``.
FRAMEWORKS = ("fastapi", "litestar", "starlette")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restaurants",
        description="Serve the portside example restaurants API with uvicorn.",
        epilog="The database comes from DATABASE_URL (default: sqlite:///restaurants.db).",
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, default="fastapi")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reload", action="store_true", help="restart when the code changes")
    parser.add_argument(
        "--no-seed", action="store_true", help="do not add sample rows to an empty database"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    args = _parser().parse_args(argv)
    try:
        settings = database_settings()
    except (ConfigurationError, ValueError) as exc:  # ValueError: pydantic's, password-free
        sys.exit(f"restaurants: invalid database settings: {exc}")
    # The app factory reads this in the server process (a new one with --reload).
    os.environ[SEED_ENV] = "false" if args.no_seed else os.environ.get(SEED_ENV, "true")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"restaurants: serving the {args.framework} app on http://{host}:{args.port}\n"
        f"restaurants: database {settings.masked_url}\n"
        f"restaurants: try  curl -s http://{host}:{args.port}/restaurants",
        flush=True,
    )
    uvicorn.run(
        f"restaurants.{args.framework}_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        reload_dirs=[str(Path(__file__).parent)] if args.reload else None,
    )


if __name__ == "__main__":
    main()
