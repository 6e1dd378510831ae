"""The README's and the docs' examples, and the integrations' docstrings', run as written.

Each framework example is written, untouched, into a module of a fresh directory
and served by uvicorn in a subprocess (this environment's python, as ``uv run``
gives it), so its SQLite file lands in that directory. Over real HTTP it must
answer ``/health``, accept a write (201) and give it back. Nothing creates the
example's table for it: its own lifespan must. The core's and the scripts' examples
run as plain scripts.
"""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import portside_fastapi
import portside_litestar
import portside_starlette
from tests.integrations.docstrings import docstring_example

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
CONCEPTS = ROOT / "docs" / "concepts.md"
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 15.0
# Warnings are errors, as in the project's pytest configuration, with its one
# exception: advanced-alchemy (imported by Litestar when installed, as it is here for
# the benchmarks) uses a decorator SQLAlchemy 2.1 deprecates.
WARNINGS = ["-W", "error", "-W", "ignore:The declarative_mixin decorator:DeprecationWarning"]


def readme_block(heading: str, *, skip: int = 0, page: Path = README) -> str:
    """The python code block ``skip`` blocks after the heading ``heading`` of ``page``."""
    text = "\n" + page.read_text()  # a page's title is its first line
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) > skip, f"no python block {skip} under {heading!r}"
    return str(blocks[skip])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(source: str, directory: Path, python: str = sys.executable) -> Iterator[httpx.Client]:
    """Serve ``source``'s ``app`` with uvicorn from ``directory``; stop it gracefully.

    ``python``: the interpreter to serve it with (the install test's fresh venv's).
    """
    (directory / "example_app.py").write_text(source)
    port = free_port()
    log = directory / "uvicorn.log"
    command = [python, *WARNINGS, "-m", "uvicorn", "example_app:app", "--port", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=directory, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    health = client.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            assert (health.status_code, health.json()["status"]) == (200, "ok"), health.text
            try:
                yield client
            except AssertionError as exc:  # show the server's side of the story too
                raise AssertionError(f"{exc}\n--- uvicorn ---\n{log.read_text()[-4000:]}") from exc
    finally:
        server.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    output = log.read_text()
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


def committed_row(database: Path, table: str, row_id: int) -> dict[str, Any]:
    """The row as committed in the SQLite file, read with the standard library."""
    with closing(sqlite3.connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()
    assert row is not None, f"no {table} {row_id} committed in {database}"
    return dict(row)


# -- the README's framework examples -------------------------------------------------


@pytest.mark.parametrize(
    ("section", "database", "path", "body"),
    [
        ("FastAPI", "heroes.db", "/heroes", {"name": "Deadpond"}),
        ("Litestar", "app.db", "/visits", {"page": "/menu"}),
        ("Starlette", "heroes.db", "/heroes", {"name": "Deadpond"}),
    ],
)
def test_the_readme_framework_example_serves(
    section: str, database: str, path: str, body: dict[str, str], tmp_path: Path
) -> None:
    source = readme_block(f"## {section}")
    with served(source, tmp_path) as client:
        created = client.post(path, json=body)
        assert created.status_code == 201, created.text
        row = created.json()
        assert row == {**body, "id": row["id"]}
        fetched = client.get(f"{path}/{row['id']}")
        assert (fetched.status_code, fetched.json()) == (200, row)
        assert client.get(f"{path}/{row['id'] + 1000}").status_code == 404
    assert (tmp_path / database).is_file()  # in the working directory, as the URL says
    # Started again on the same file: the table is there, and so is the row.
    with served(source, tmp_path) as client:
        assert client.get(f"{path}/{row['id']}").json() == row
        assert client.post(path, json=body).status_code == 201


@pytest.mark.parametrize(
    ("section", "package"),
    [("FastAPI", "fastapi"), ("Litestar", "litestar"), ("Starlette", "starlette")],
)
def test_every_copy_of_the_framework_example_is_the_readmes(section: str, package: str) -> None:
    """The docs page and the package README (what an index shows) show the tested code."""
    tested = readme_block(f"## {section}")
    assert readme_block("## The example", page=ROOT / "docs" / f"{package}.md") == tested
    package_readme = ROOT / "integrations" / f"portside-{package}" / "README.md"
    assert readme_block("## Example", page=package_readme) == tested


# -- the integrations' docstring examples (they have no read route: read the file) ----------


@pytest.mark.parametrize(
    ("module", "database", "table", "path", "body"),
    [
        (portside_fastapi, "heroes.db", "hero", "/heroes", {"name": "Deadpond"}),
        (portside_litestar, "app.db", "visit", "/visits", None),
        (portside_starlette, "heroes.db", "hero", "/heroes", {"name": "Deadpond"}),
    ],
    ids=["fastapi", "litestar", "starlette"],
)
def test_the_docstring_example_serves(
    module: ModuleType,
    database: str,
    table: str,
    path: str,
    body: dict[str, str] | None,
    tmp_path: Path,
) -> None:
    with served(docstring_example(module), tmp_path) as client:
        created = client.post(path, json=body)
        assert created.status_code == 201, created.text
        row_id = created.json()["id"]
        # Committed before the client saw the 201.
        assert committed_row(tmp_path / database, table, row_id) == {**(body or {}), "id": row_id}


# -- the core, and scripts -----------------------------------------------------------


def run_script(source: str, directory: Path) -> str:
    result = subprocess.run(
        [sys.executable, *WARNINGS, "-c", source],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_core_example_runs(tmp_path: Path) -> None:
    source = readme_block("## Use the core directly", page=CONCEPTS)
    output = run_script(source, tmp_path)
    assert "name='Deadpond'" in output
    assert "id=1" in output
    output = run_script(source, tmp_path)  # again: the table exists, a second row
    assert output.count("name='Deadpond'") == 2
    assert "id=2" in output
    assert "up=True" in output
    assert (tmp_path / "app.db").is_file()


def test_the_transactions_example_runs(tmp_path: Path) -> None:
    page = ROOT / "docs" / "transactions.md"
    output = run_script(readme_block("# Transactions to build on", page=page), tmp_path)
    assert "committed: tell the world" in output
    assert "never printed" not in output
    assert "value 1" in output
    assert "stopped: OperationalError" in output


def test_the_scripts_example_runs_without_an_event_loop(tmp_path: Path) -> None:
    text = CONCEPTS.read_text()
    scripts = text[text.index("**Scripts and CLIs.**") :]
    match = re.search(r"```python\n(.*?)```", scripts, re.DOTALL)
    assert match is not None
    assert "Rusty-Man" in run_script(match.group(1), tmp_path)
    assert run_script(match.group(1), tmp_path).count("Rusty-Man") == 2
