"""Every response portside substitutes leaves one line in a server's default output.

Issue 12, item 6: under ``uvicorn app:app`` with no logging configured, a 503 or a
500 that portside answers itself used to leave no line anywhere (and nothing at all
under Litestar). Each app here runs under a real uvicorn with its default logging.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.production.pgbouncer import free_port, listening

#: The lifespan every app below imports: a child table whose foreign key is checked
#: only at COMMIT, so a write to it fails exactly when portside commits.
SCHEMA = textwrap.dedent(
    """
    from contextlib import asynccontextmanager

    from sqlalchemy import text

    @asynccontextmanager
    async def lifespan(app, lifecycle):
        async with lifecycle.async_session() as session:
            await session.exec(
                text("CREATE TABLE IF NOT EXISTS child_parent (id INTEGER PRIMARY KEY)")
            )
            await session.exec(text(
                "CREATE TABLE IF NOT EXISTS child (parent_id INTEGER NOT NULL "
                "REFERENCES child_parent (id) DEFERRABLE INITIALLY DEFERRED)"
            ))
        yield
    """
)


def _fastapi_app(url: str) -> str:
    return textwrap.dedent(
        f"""
        from fastapi import FastAPI
        from sqlalchemy import text

        import portside_fastapi
        from portside import DatabaseSettings
        from schema import lifespan
        from portside_fastapi import AsyncSessionDep


        app = FastAPI()
        portside_fastapi.install(app, DatabaseSettings(url="{url}"), lifespan=lifespan)

        @app.post("/down", status_code=201)
        async def down(session: AsyncSessionDep) -> dict:
            raise ConnectionRefusedError(111, "Connect call failed")  # as asyncpg raises it

        @app.post("/lost", status_code=201)
        async def lost(session: AsyncSessionDep) -> dict:
            await session.exec(text("INSERT INTO child VALUES (999)"))  # fails at COMMIT
            return {{}}
        """
    )


def _litestar_app(url: str) -> str:
    return textwrap.dedent(
        f"""
        from litestar import Litestar, post
        from sqlalchemy import text

        from portside import DatabaseSettings
        from schema import lifespan
        from portside_litestar import AsyncSessionDep, PortsidePlugin


        @post("/down")
        async def down(db_session: AsyncSessionDep) -> dict:
            raise ConnectionRefusedError(111, "Connect call failed")  # as asyncpg raises it

        @post("/lost")
        async def lost(db_session: AsyncSessionDep) -> dict:
            await db_session.exec(text("INSERT INTO child VALUES (999)"))  # fails at COMMIT
            return {{}}

        app = Litestar(
            [down, lost],
            plugins=[PortsidePlugin(DatabaseSettings(url="{url}"), lifespan=lifespan)],
        )
        """
    )


def _starlette_app(url: str) -> str:
    return textwrap.dedent(
        f"""
        from sqlalchemy import text
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        import portside_starlette
        from portside import DatabaseSettings
        from schema import lifespan


        async def down(request):
            await portside_starlette.async_session(request)
            raise ConnectionRefusedError(111, "Connect call failed")  # as asyncpg raises it

        async def lost(request):
            session = await portside_starlette.async_session(request)
            await session.exec(text("INSERT INTO child VALUES (999)"))  # fails at COMMIT
            return JSONResponse({{}}, status_code=201)

        app = Starlette(routes=[
            Route("/down", down, methods=["POST"]), Route("/lost", lost, methods=["POST"])
        ])
        portside_starlette.install(app, DatabaseSettings(url="{url}"), lifespan=lifespan)
        """
    )


WRITERS = {"fastapi": _fastapi_app, "litestar": _litestar_app, "starlette": _starlette_app}


@pytest.mark.parametrize("framework", sorted(WRITERS))
def test_every_substituted_response_leaves_one_line(framework: str, tmp_path: Path) -> None:
    (tmp_path / "schema.py").write_text(SCHEMA)
    (tmp_path / "served.py").write_text(WRITERS[framework](f"sqlite:///{tmp_path}/app.db"))
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "served:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port):
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            down = client.post("/down")
            lost = client.post("/lost")
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert down.status_code == 503
    assert down.headers["retry-after"] == "1"
    assert lost.status_code == 500
    lines = output.splitlines()
    unavailable = [line for line in lines if "portside answered 503" in line]
    assert len(unavailable) == 1, output
    assert "server unreachable" in unavailable[0]
    assert "ConnectionRefusedError" in unavailable[0]
    commit = [line for line in lines if "portside answered 500 instead of the app's 201" in line]
    assert len(commit) == 1, output
    assert "IntegrityError" in commit[0] or "FOREIGN KEY" in commit[0]
