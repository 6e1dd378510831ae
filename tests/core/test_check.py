"""``portside check``: what it reports, and how it fails (one line, no secrets)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from portside.check import main

# '@' percent-encoded in the URL: neither spelling may ever be printed.
PASSWORD = "s3cr@t"
ENCODED_PASSWORD = "s3cr%40t"
#: Roles are cluster-wide: named after the test's database, so parallel workers (each
#: with its own database) never drop each other's.
CHECK_ROLE = "portside_check_user_{database}"

DATABASE_KEYS = {
    "ok",
    "error",
    "backend",
    "urls",
    "drivers",
    "server_version",
    "latency_ms",
    "pool",
    "pragmas",
    "budget",
    "replicas",
}


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DATABASE_* variable or .env file of the developer's leaks into a check."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "DATABASE_URL",
        "DATABASE_ASYNC_URL",
        "DATABASE_ENGINES",
        "DATABASE_POOL_SIZE",
        "DATABASE_PGBOUNCER",
        "WEB_CONCURRENCY",
    ):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_fails_cleanly(result: tuple[int, str, str], *, code: int, reason: str) -> None:
    """Exit ``code``, one line on stderr naming ``reason``, no traceback, no password."""
    exit_code, out, err = result
    assert exit_code == code, (out, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("portside check: ")
    assert reason in err
    for text in (out, err):
        assert "Traceback" not in text
        assert PASSWORD not in text
        assert ENCODED_PASSWORD not in text


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_credentials(url: str, user: str, password: str) -> str:
    return make_url(url).set(username=user, password=password).render_as_string(False)


# -- databases that answer -----------------------------------------------------------


def test_sqlite_file_shows_drivers_version_pool_and_pragmas(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "--url", f"sqlite:///{tmp_path / 'app.db'}")

    assert (code, err) == (0, "")
    assert "database 'default': ok" in out
    assert f"sqlite:///{tmp_path / 'app.db'} (driver pysqlite)" in out
    assert f"sqlite+aiosqlite:///{tmp_path / 'app.db'} (driver aiosqlite)" in out
    assert "server:     sqlite 3." in out
    assert "latency:" in out
    assert "pool:       size=5 max_overflow=10 timeout=30s recycle=1800s pre_ping=off" in out
    assert "journal_mode=wal foreign_keys=on busy_timeout=5000 synchronous=normal" in out


def test_settings_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_ASYNC_URL", f"sqlite+aiosqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("DATABASE_ENGINES", "async")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")

    code, out, _ = run(capsys, "--json")

    assert code == 0
    database = json.loads(out)["databases"]["default"]
    assert database["urls"] == {"async": f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"}
    assert database["drivers"] == {"async": "aiosqlite"}
    assert database["pool"]["size"] == 3


def test_json_document_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "--url", f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", "--json")

    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["ok"] is True
    assert document["error"] is None
    database = document["databases"]["default"]
    assert set(database) == DATABASE_KEYS
    assert database["ok"] is True
    assert database["error"] is None
    assert database["backend"] == "sqlite"
    assert database["drivers"] == {"sync": "pysqlite", "async": "aiosqlite"}
    assert database["server_version"].startswith("3.")
    assert database["latency_ms"] > 0
    assert database["pool"] == {
        "size": 5,
        "max_overflow": 10,
        "timeout": 30.0,
        "recycle": 1800.0,
        "pre_ping": False,
    }
    assert database["pragmas"] == {
        "journal_mode": "wal",
        "foreign_keys": True,
        "busy_timeout": 5000,
        "synchronous": "normal",
    }


def test_postgresql_shows_the_server_version(
    capsys: pytest.CaptureFixture[str], postgresql_url: str
) -> None:
    with psycopg.connect(make_url(postgresql_url).render_as_string(False)) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    assert row is not None

    code, out, err = run(capsys, "--url", postgresql_url, "--json")

    assert (code, err) == (0, "")
    database = json.loads(out)["databases"]["default"]
    assert database["server_version"] == row[0]
    assert database["drivers"] == {"sync": "psycopg", "async": "asyncpg"}
    assert database["pool"]["pre_ping"] is True
    assert database["pragmas"] is None

    code, out, _ = run(capsys, "--url", postgresql_url)
    assert code == 0
    assert f"server:     postgresql {row[0]}" in out


# -- the connection budget ----------------------------------------------------------


def server_slots(postgresql_url: str) -> int:
    """max_connections minus superuser_reserved_connections, read from the server."""
    with psycopg.connect(make_url(postgresql_url).render_as_string(False)) as connection:
        row = connection.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - coalesce(current_setting('reserved_connections', true)::int, 0)"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_budget_fits_the_real_server(
    capsys: pytest.CaptureFixture[str], postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    available = server_slots(postgresql_url)
    monkeypatch.setenv("DATABASE_ENGINES", "async")
    workers = available // 15  # as many workers as fit: pool 5 + overflow 10 each

    code, out, err = run(capsys, "--url", postgresql_url, "--workers", str(workers), "--json")

    assert (code, err) == (0, ""), out
    budget = json.loads(out)["databases"]["default"]["budget"]
    assert budget["fits"] is True
    assert budget["connections"] == workers * 15
    assert budget["server"]["available"] == available
    assert budget["engines"] == ["async"]
    assert budget["pgbouncer"] is None


def test_budget_over_the_real_server_fails_with_the_arithmetic(
    capsys: pytest.CaptureFixture[str], postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    available = server_slots(postgresql_url)
    # Both engines (the default): 30 connections per worker; WEB_CONCURRENCY as a
    # server would read it.
    workers = available // 30 + 1
    monkeypatch.setenv("WEB_CONCURRENCY", str(workers))

    code, out, err = run(capsys, "--url", postgresql_url)

    assert code == 3, (out, err)
    assert f"{workers} worker(s) x 2 engines (sync+async) x 15" in out
    assert "DOES NOT FIT" in out
    assert len(err.splitlines()) == 1
    assert f"= {workers * 30} can be open at once, but the server accepts {available}" in err
    assert "max_connections" in err
    assert "DATABASE_POOL_SIZE" in err


def test_budget_is_left_out_for_sqlite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "--url", f"sqlite:///{tmp_path / 'app.db'}", "--workers", "500")

    assert code == 0
    assert "budget:" not in out


def test_bad_workers_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "--workers", "0")
    assert code == 2
    assert "positive whole number" in err
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    code, _, err = run(capsys)
    assert code == 2
    assert "WEB_CONCURRENCY" in err


# -- failures: exit code, one line, no traceback, no password --------------------------


def test_unreachable_host(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://app:{ENCODED_PASSWORD}@127.0.0.1:{closed_port()}/app"

    result = run(capsys, "--url", url, "--timeout", "0.5")

    assert_fails_cleanly(result, code=1, reason="ConnectionRefusedError")
    assert "within 0.5s (--timeout)" in result[2]
    assert "app:***@127.0.0.1" in result[2]
    assert "database 'default': FAILED" in result[1]


def test_unknown_role_is_an_authentication_failure(
    capsys: pytest.CaptureFixture[str], postgresql_url: str
) -> None:
    # The test server trusts 127.0.0.1, so a wrong password alone may be accepted
    # (see the next test); a role that does not exist is refused at authentication.
    url = with_credentials(postgresql_url, "portside_no_such_role", PASSWORD)

    result = run(capsys, "--url", url, "--timeout", "0.5")

    assert_fails_cleanly(result, code=1, reason='role "portside_no_such_role" does not exist')


@pytest.fixture
def check_role(postgresql_url: str) -> Iterator[str]:
    """A login role with a password that is not the test's PASSWORD."""
    admin = make_url(postgresql_url).render_as_string(False)
    role = CHECK_ROLE.format(database=make_url(postgresql_url).database)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP ROLE IF EXISTS "{role}"')
        connection.execute(f"""CREATE ROLE "{role}" LOGIN PASSWORD 'the-right-one'""")
    try:
        yield role
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_wrong_password(
    capsys: pytest.CaptureFixture[str], postgresql_url: str, check_role: str
) -> None:
    url = with_credentials(postgresql_url, check_role, PASSWORD)
    try:
        with psycopg.connect(url, connect_timeout=2):
            pass
    except psycopg.OperationalError:
        pass
    else:
        pytest.skip("the server accepts any password from here (pg_hba.conf 'trust')")

    result = run(capsys, "--url", url, "--timeout", "0.5")

    assert_fails_cleanly(result, code=1, reason="password authentication failed")


def test_missing_driver(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    # "both" asks for the async engine explicitly ("auto" would start without it).
    monkeypatch.setenv("DATABASE_ENGINES", "both")
    url = f"postgresql://app:{ENCODED_PASSWORD}@127.0.0.1:{closed_port()}/app"

    result = run(capsys, "--url", url, "--json")

    assert_fails_cleanly(result, code=1, reason="driver 'asyncpg' is not installed")
    document = json.loads(result[1])
    assert document["ok"] is False
    assert document["databases"]["default"]["ok"] is False
    assert "portside[postgresql]" in document["databases"]["default"]["error"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param(
            "postgresql://app:s3cr@t@db.example/app", "--url has an unescaped '@'", id="at-sign"
        ),
        pytest.param(
            f"mongodb://app:{ENCODED_PASSWORD}@db.example/app",
            "--url uses the unknown database scheme 'mongodb'",
            id="unknown-scheme",
        ),
        pytest.param(
            f"mysql://app:{ENCODED_PASSWORD}@db.example/app",
            "'mysql' database, which portside does not support",
            id="unsupported-backend",
        ),
        pytest.param("not a url", "--url is not a valid database URL", id="not-a-url"),
    ],
)
def test_malformed_url(capsys: pytest.CaptureFixture[str], url: str, reason: str) -> None:
    assert_fails_cleanly(run(capsys, "--url", url), code=2, reason=reason)


def test_malformed_url_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--url", "postgresql://app:s3cr@t@db.example/app", "--json")

    assert_fails_cleanly(result, code=2, reason="unescaped '@'")
    document = json.loads(result[1])
    assert document["ok"] is False
    assert document["databases"] == {}
    assert "unescaped '@'" in document["error"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Tr0ub@dor/Secret@127.0.0.1:5432/app",
        "postgresql://app:Tr0ub@dor?Secret@127.0.0.1:5432/app",
        "postgresql://app:Tr0ub@dor#Secret@127.0.0.1:5432/app",
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_no_fragment_of_an_unescaped_password_is_printed(
    capsys: pytest.CaptureFixture[str], url: str, as_json: bool
) -> None:
    result = run(capsys, "--url", url, "--timeout", "0.5", *(["--json"] if as_json else []))

    assert_fails_cleanly(result, code=2, reason="unescaped '@'")
    for text in result[1:]:
        for fragment in ("Tr0ub", "dor", "Secret"):
            assert fragment not in text


def test_invalid_environment_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{ENCODED_PASSWORD}@db.example/app")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "lots")

    assert_fails_cleanly(run(capsys), code=2, reason="DATABASE_POOL_SIZE")


def test_bad_timeout_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--timeout", "0")

    assert code == 2
    assert "expected a positive number of seconds" in err


# -- the installed command -------------------------------------------------------------


def test_console_script(tmp_path: Path) -> None:
    script = shutil.which("portside", path=sysconfig.get_path("scripts"))
    assert script is not None, "the portside console script is not installed"

    ok = subprocess.run(
        [script, "check", "--url", f"sqlite:///{tmp_path / 'app.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ok.returncode, ok.stderr) == (0, ""), ok.stderr
    assert "journal_mode=wal" in ok.stdout

    # A real process has no pytest log capture: the lifecycle's retry warnings must
    # not reach stderr there either.
    down = subprocess.run(
        [
            script,
            "check",
            "--url",
            f"sqlite:///{tmp_path / 'missing' / 'app.db'}",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1
    assert len(down.stderr.splitlines()) == 1, down.stderr
    assert "unable to open database file" in down.stderr
