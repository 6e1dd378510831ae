"""A client that closes its connection while its request's query runs, under uvicorn.

uvicorn keeps running a request whose client left; portside notices the
disconnect, stops the query on the server (``pg_sleep(60)`` here) and rolls the
request's unit of work back: the row it wrote is not there, its connection went
back to the pool, nothing runs or waits in a transaction on the server.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.production.postgres import admin_execute, database_name, with_application_name
from tests.production.server import Uvicorn

pytestmark = [pytest.mark.postgresql]

#: How long the query would run if nothing stopped it.
QUERY_SECONDS = 60
#: How long the test waits for each state it expects (well below QUERY_SECONDS).
WITHIN = 15


def _activity(url: str, tag: str) -> list[tuple[str, str]]:
    rows = admin_execute(
        url,
        "SELECT coalesce(state, ''), query FROM pg_stat_activity "
        f"WHERE application_name = '{tag}' AND pid <> pg_backend_pid()",
    )
    return [(str(state), str(query)) for state, query in rows]


def _sleeping(url: str, tag: str) -> bool:
    return any(s == "active" and "pg_sleep" in q for s, q in _activity(url, tag))


def _wait_for(what: str, check: object, server: Uvicorn) -> None:
    deadline = time.monotonic() + WITHIN
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; server output:\n{server.output()}")
        time.sleep(0.05)  # polling the server: there is no event to wait for


@pytest.mark.parametrize("route", ["/probe/slow-write", "/probe/sync-slow-write"])
def test_a_client_that_hangs_up_mid_query_stops_it(
    route: str, production_database: str, tmp_path: Path
) -> None:
    tag = f"portside-gone-{uuid.uuid4().hex[:8]}"
    url = with_application_name(production_database, tag)
    server = Uvicorn(url, tmp_path / "uvicorn.log")
    name = f"{tag}-row"
    try:
        server.wait_ready()
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(
            f"POST {route}?name={name}&seconds={QUERY_SECONDS} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()
        )
        _wait_for("the query to run", lambda: _sleeping(production_database, tag), server)
        client.close()
        _wait_for(
            "the query to stop and the connection to leave its transaction",
            lambda: (
                not _sleeping(production_database, tag)
                and not [s for s, _ in _activity(production_database, tag) if "transaction" in s]
            ),
            server,
        )
        output = server.output()
    finally:
        server.stop()
    stored = admin_execute(
        production_database,
        f"SELECT count(*) FROM restaurant WHERE name = '{name}'",
        database=database_name(production_database),
    )
    assert stored == [(0,)], "the unit of a client that left committed"
    assert f"portside answered nothing to POST {route}: the client disconnected" in output
    assert "Traceback" not in output, output
