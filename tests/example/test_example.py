"""The example app as a user runs it: its CLI serving each framework's version.

Each test starts ``python -m restaurants.cli`` in a fresh working directory on a
free loopback port, waits for ``/health``, drives the API over real HTTP, then
stops the server with SIGTERM and checks it shut down cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from restaurants.models import MenuItem, Restaurant
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from portside import DatabaseSettings

FRAMEWORKS = ["fastapi", "litestar", "starlette"]
SEEDED = ["Trattoria Sole", "Sakura", "El Fogón"]
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 15.0


@dataclass
class Server:
    url: str
    log: Path
    returncode: int | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(process: subprocess.Popen[bytes], server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"no healthy server after {STARTUP_TIMEOUT} s:\n{server.output()}")


@contextmanager
def serve(framework: str, cwd: Path, database_url: str | None = None) -> Iterator[Server]:
    """Run the ``restaurants`` CLI in ``cwd`` until the block ends; always stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "RESTAURANTS_"))}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    port = free_port()
    server = Server(url=f"http://127.0.0.1:{port}", log=cwd / f"{framework}.log")
    command = [sys.executable, "-m", "restaurants.cli", "--framework", framework]
    with server.log.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=cwd, env=env, stdout=log, stderr=log
        )
        try:
            wait_until_healthy(process, server)
            yield server
        finally:
            process.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
            try:
                process.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            server.returncode = process.returncode


def exercise(client: httpx.Client) -> None:
    """The API's behaviour, identical for every framework and database."""
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    # Seeded on first start; paginated.
    listed = client.get("/restaurants")
    assert listed.status_code == 200
    assert [r["name"] for r in listed.json()] == SEEDED
    assert client.get("/restaurants", params={"offset": 1, "limit": 1}).json() == [listed.json()[1]]
    assert client.get("/restaurants", params={"limit": 0}).status_code == 422

    # Create, read back.
    created = client.post("/restaurants", json={"name": "Chez Nous", "cuisine": "french"})
    assert created.status_code == 201, created.text
    restaurant = created.json()
    assert restaurant == {
        "id": restaurant["id"],
        "name": "Chez Nous",
        "cuisine": "french",
        "rating": 0,
    }
    assert client.get(f"/restaurants/{restaurant['id']}").json() == restaurant

    # Invalid input: 422, nothing written.
    invalid = client.post("/restaurants", json={"name": "", "cuisine": "thai", "rating": 9})
    assert invalid.status_code == 422
    assert len(client.get("/restaurants").json()) == len(SEEDED) + 1

    # Update some fields; an invalid update changes nothing.
    updated = client.patch(f"/restaurants/{restaurant['id']}", json={"rating": 4.5})
    assert updated.status_code == 200
    assert updated.json() == {**restaurant, "rating": 4.5}
    assert client.patch(f"/restaurants/{restaurant['id']}", json={"rating": -1}).status_code == 422
    assert client.get(f"/restaurants/{restaurant['id']}").json()["rating"] == 4.5

    # Two tables in one unit of work: all committed...
    menu = [{"name": "Har gow", "price_cents": 550}, {"name": "Siu mai", "price_cents": 500}]
    both = client.post(
        "/restaurants/with-menu", json={"name": "Dim Sum", "cuisine": "chinese", "menu": menu}
    )
    assert both.status_code == 201, both.text
    with_menu = both.json()
    assert [(i["name"], i["price_cents"]) for i in with_menu["menu"]] == [
        ("Har gow", 550),
        ("Siu mai", 500),
    ]
    assert client.get(f"/restaurants/{with_menu['id']}/menu").json() == with_menu["menu"]
    # ...or none: the second table's constraint fails, the first table's row goes too.
    twice = [menu[0], menu[0]]
    conflict = client.post(
        "/restaurants/with-menu", json={"name": "Twice", "cuisine": "x", "menu": twice}
    )
    assert conflict.status_code == 409, conflict.text
    assert "Twice" not in [r["name"] for r in client.get("/restaurants").json()]

    # Delete (the menu goes with it), then 404s.
    for deleted in (restaurant["id"], with_menu["id"]):
        assert client.delete(f"/restaurants/{deleted}").status_code == 204
        assert client.get(f"/restaurants/{deleted}").status_code == 404
        assert client.delete(f"/restaurants/{deleted}").status_code == 404
    assert client.get(f"/restaurants/{with_menu['id']}/menu").status_code == 404
    assert client.patch("/restaurants/999999", json={"rating": 1}).status_code == 404
    assert [r["name"] for r in client.get("/restaurants").json()] == SEEDED


def assert_clean_shutdown(server: Server) -> None:
    output = server.output()
    # uvicorn re-raises the signal it stopped on, after its graceful shutdown.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_example_on_sqlite(framework: str, tmp_path: Path) -> None:
    with serve(framework, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        exercise(client)

    assert_clean_shutdown(server)
    assert (tmp_path / "restaurants.db").is_file()
    output = server.output()
    assert f"serving the {framework} app on {server.url}" in output
    assert "database sqlite:///restaurants.db" in output


@pytest.fixture
def example_postgresql(postgresql_url: str) -> Iterator[str]:
    """``postgresql_url`` without the example's tables (the app creates them)."""
    engine = create_engine(DatabaseSettings(url=postgresql_url).sync_url_object)
    tables = [MenuItem.__table__, Restaurant.__table__]  # type: ignore[attr-defined]  # set by SQLModel
    try:
        SQLModel.metadata.drop_all(engine, tables=tables)
        yield postgresql_url
        SQLModel.metadata.drop_all(engine, tables=tables)
    finally:
        engine.dispose()


@pytest.mark.postgresql
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_example_on_postgresql(framework: str, example_postgresql: str, tmp_path: Path) -> None:
    with (
        serve(framework, tmp_path, database_url=example_postgresql) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        exercise(client)

    assert_clean_shutdown(server)
    assert not (tmp_path / "restaurants.db").exists()
    settings = DatabaseSettings(url=example_postgresql)
    output = server.output()
    assert f"database {settings.masked_url}" in output
    if settings.sync_url_object.password:
        assert settings.sync_url_object.password not in output
