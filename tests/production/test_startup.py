"""Item 7: the database is down when the app starts, then comes back.

"Down" is a PgBouncer port nothing listens on yet; "back" is a PgBouncer started
on that port. Startup must fail within the startup timeout with
:class:`portside.StartupError` naming the masked URL and the cause; a restart once
the server answers must work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from restaurants.fastapi_app import create_app
from sqlalchemy.engine import make_url

from portside import DatabaseSettings, StartupError
from portside_testing.asgi import AppRunner
from tests.production.load import report
from tests.production.pgbouncer import PgBouncer, free_port
from tests.production.postgres import database_name

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

STARTUP_TIMEOUT = 2.0
PASSWORD = "s3cret-Pw"


async def test_startup_fails_in_time_without_the_database_and_a_restart_works(
    production_database: str, postgresql_url: str, tmp_path: Path
) -> None:
    if PgBouncer.binary() is None:
        message = "the pgbouncer binary is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires it")
        pytest.skip(message)
    port = free_port()
    # PgBouncer trusts every user, so the password only checks that errors mask it.
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/{database_name(production_database)}"
    settings = DatabaseSettings(url=url, startup_timeout=STARTUP_TIMEOUT, connect_timeout=1)

    started = time.monotonic()
    with pytest.raises(StartupError) as failure:
        async with AppRunner(create_app(settings, seed=False)):
            pass
    elapsed = time.monotonic() - started
    message = str(failure.value)
    assert PASSWORD not in message
    assert f"postgres:***@127.0.0.1:{port}" in message
    assert "did not become ready within 2s" in message
    assert "ConnectionRefusedError" in message  # the cause, named
    assert elapsed < STARTUP_TIMEOUT + 3

    server = make_url(postgresql_url)
    bouncer = PgBouncer(
        tmp_path / "pgbouncer",
        server_host=server.host or "127.0.0.1",
        server_port=server.port or 5432,
        port=port,
    )
    bouncer.start()
    try:
        async with AppRunner(create_app(settings, seed=False)) as runner:
            health = await runner.request("GET", "/health")
            write = await runner.request("POST", "/restaurants", json={"name": "b", "cuisine": "x"})
    finally:
        bouncer.stop()
    report(
        "startup-without-database",
        failed_startup_seconds=round(elapsed, 2),
        startup_timeout=STARTUP_TIMEOUT,
        error=repr(message),
        restart_health=health.status,
        restart_write=write.status,
    )
    assert health.status == 200
    assert write.status == 201
