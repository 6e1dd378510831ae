"""Each integration under a real server: uvicorn in a subprocess, real HTTP.

The conformance apps served as they would be in production: a write is answered
201 only once committed, a commit that fails at COMMIT time is answered with a 5xx,
and a second request reads the first one's write.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from portside import DatabaseSettings
from portside_testing.conformance.models import metadata

SERVED_APP = """
import sys
sys.path.insert(0, {harness_dir!r})
from harness_{framework} import {harness}
from portside import DatabaseSettings
app = {harness}().build_app(DatabaseSettings(url={url!r}), {mode!r})
"""

HARNESSES = {
    "fastapi": "FastAPIHarness",
    "litestar": "LitestarHarness",
    "starlette": "StarletteHarness",
}


@pytest.fixture(params=["sqlite-file", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'served.db'}"
    return str(request.getfixturevalue("postgresql_url"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("framework", sorted(HARNESSES))
def test_under_uvicorn_commits_before_answering(
    tmp_path: Path, database_url: str, framework: str, mode: str
) -> None:
    settings = DatabaseSettings(url=database_url)
    engine = create_engine(settings.url or "")
    with engine.begin() as connection:
        metadata.drop_all(connection)
        metadata.create_all(connection)
    engine.dispose()
    (tmp_path / "served.py").write_text(
        SERVED_APP.format(
            harness_dir=str(Path(__file__).parents[1] / "conformance"),
            framework=framework,
            harness=HARNESSES[framework],
            url=settings.url,
            mode=mode,
        )
    )
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "served:app", "--port", str(port)]
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            created = client.post("/items", json={"name": "served"})
            assert created.status_code == 201, created.text
            failed = client.post("/items/deferred", json={"name": "orphan"})
            assert failed.status_code >= 500, failed.text
            fetched = client.get(f"/items/{created.json()['id']}")
            assert (fetched.status_code, fetched.json()) == (200, created.json())
            assert client.get("/items").json() == {"names": ["served"]}
    finally:
        server.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert b"Application shutdown complete" in log.read_bytes(), log.read_text()
