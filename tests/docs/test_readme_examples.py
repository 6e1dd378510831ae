"""The README's per-framework examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"

# Appended to each example: create its table, then post through the app twice over.
DRIVER = textwrap.dedent(
    """
    import anyio
    from sqlalchemy import create_engine
    from sqlmodel import SQLModel
    from portside_testing.asgi import AppRunner

    engine = create_engine(DATABASE)
    SQLModel.metadata.create_all(engine)
    engine.dispose()

    async def main() -> None:
        for _ in range(2):  # started again: fresh engines
            async with AppRunner(app) as client:
                created = await client.request("POST", PATH, json=BODY)
                assert created.status == 201, (created.status, created.text)
                assert (await client.request("GET", "/health")).status == 200

    anyio.run(main)
    """
)


def example(section: str) -> str:
    """The first python code block after the README heading ``## {section}``."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", body, re.DOTALL)
    assert match is not None, section
    return match.group(1)


@pytest.mark.parametrize(
    ("section", "database", "path", "body"),
    [
        ("FastAPI", "sqlite:///heroes.db", "/heroes", {"name": "Deadpond"}),
        ("Litestar", "sqlite:///app.db", "/visits", None),
        ("Starlette", "sqlite:///heroes.db", "/heroes", {"name": "Deadpond"}),
    ],
)
def test_framework_example_runs(
    section: str, database: str, path: str, body: object, tmp_path: Path
) -> None:
    script = (
        example(section) + f"\nDATABASE, PATH, BODY = {database!r}, {path!r}, {body!r}\n" + DRIVER
    )
    result = subprocess.run(
        # The benchmark's advanced-alchemy, which Litestar imports when installed, trips
        # a SQLAlchemy 2.1 deprecation: the same single exception pyproject.toml makes.
        [
            sys.executable,
            "-W",
            "error",
            "-W",
            "ignore:The declarative_mixin decorator:DeprecationWarning",
            "-c",
            script,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
