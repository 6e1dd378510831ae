"""``portside check``'s connection budget behind PgBouncer: its limits, from its console."""

from __future__ import annotations

import json

import pytest

from portside.check import main
from tests.production.pgbouncer import MAX_CLIENT_CONN, SERVER_POOL_SIZE, PgBouncer
from tests.production.postgres import through

pytestmark = pytest.mark.postgresql


@pytest.fixture(autouse=True)
def _pgbouncer_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_PGBOUNCER", "true")
    monkeypatch.setenv("DATABASE_ENGINES", "async")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)


def check(capsys: pytest.CaptureFixture[str], url: str, workers: int) -> tuple[int, dict, str]:
    code = main(["check", "--url", url, "--workers", str(workers), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)["databases"]["default"]["budget"], captured.err


def test_clients_within_max_client_conn_fit(
    capsys: pytest.CaptureFixture[str], pgbouncer: PgBouncer, postgresql_url: str
) -> None:
    # Far more than the server's max_connections, but PgBouncer multiplexes them.
    workers = MAX_CLIENT_CONN // 15
    code, budget, err = check(capsys, through(pgbouncer, postgresql_url), workers)

    assert (code, err) == (0, "")
    assert budget["pgbouncer"] == {
        "max_client_conn": MAX_CLIENT_CONN,
        "default_pool_size": SERVER_POOL_SIZE,
        "reserve_pool_size": 0,
    }
    assert budget["fits"] is True


def test_clients_over_max_client_conn_do_not_fit(
    capsys: pytest.CaptureFixture[str], pgbouncer: PgBouncer, postgresql_url: str
) -> None:
    workers = MAX_CLIENT_CONN // 15 + 1
    code, budget, err = check(capsys, through(pgbouncer, postgresql_url), workers)

    assert code == 3
    assert budget["fits"] is False
    assert f"PgBouncer's max_client_conn is {MAX_CLIENT_CONN}" in err


def test_an_unreadable_console_is_said_and_the_server_is_used(
    capsys: pytest.CaptureFixture[str], postgresql_url: str
) -> None:
    # DATABASE_PGBOUNCER set, but the URL is the server itself: no console there.
    code, budget, err = check(capsys, postgresql_url, 1)

    assert (code, err) == (0, "")
    assert budget["pgbouncer"] is None
    assert 'database "pgbouncer" does not exist' in budget["pgbouncer_unread"]
    assert budget["fits"] is True
