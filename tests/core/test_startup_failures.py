"""Startup retries what can heal and fails at once on what cannot, with both drivers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from portside import DatabaseSettings, Lifecycle, StartupError

pytestmark = pytest.mark.anyio

PASSWORD = "S3cr@t/pw"
ENCODED_PASSWORD = "S3cr%40t%2Fpw"
LIMITED_ROLE = "portside_startup_limited"
# "engines" setting -> the driver that runs the startup check.
ENGINES = pytest.mark.parametrize("engines", ["sync", "async"], ids=["psycopg", "asyncpg"])


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_with(postgresql_url: str, **parts: object) -> str:
    url = make_url(postgresql_url).set(**parts)  # type: ignore[arg-type]
    return url.render_as_string(hide_password=False).replace(PASSWORD, ENCODED_PASSWORD)


async def start(url: str, engines: str, *, startup_timeout: float) -> str:
    """Start a lifecycle that must fail; the text of its StartupError."""
    settings = DatabaseSettings(
        url=url, engines=engines, startup_timeout=startup_timeout, connect_timeout=2
    )
    with pytest.raises(StartupError) as caught:
        async with Lifecycle({"orders": settings}):
            pass
    message = str(caught.value)
    assert "'orders'" in message
    assert PASSWORD not in message
    assert ENCODED_PASSWORD not in message
    return message


@ENGINES
@pytest.mark.parametrize(
    ("parts", "query", "cause"),
    [
        pytest.param({"database": "portside_no_such_database"}, "", "does not exist", id="3D000"),
        pytest.param({"username": "portside_no_such_role"}, "", "portside_no_such_role", id="28"),
        pytest.param({}, "?sslmode=require", "SSL", id="sslmode"),
    ],
)
async def test_what_cannot_heal_fails_at_once(
    postgresql_url: str, engines: str, parts: dict[str, str], query: str, cause: str
) -> None:
    url = url_with(postgresql_url, password=PASSWORD, **parts) + query
    with anyio.fail_after(15):  # retrying would spend the whole 60 s
        message = await start(url, engines, startup_timeout=60)
    assert "failed its startup check" in message
    assert cause in message
    assert "127.0.0.1" in message  # the masked URL


@ENGINES
async def test_a_closed_port_is_retried_until_the_startup_timeout(
    postgresql_url: str, engines: str
) -> None:
    url = url_with(postgresql_url, host="127.0.0.1", port=closed_port(), password=PASSWORD)
    with anyio.fail_after(15):
        message = await start(url, engines, startup_timeout=1.0)
    assert "did not become ready within 1s" in message
    assert "attempt(s)" in message
    assert "after 1 attempt(s)" not in message


@pytest.fixture
async def limited_role(postgresql_url: str) -> AsyncIterator[str]:
    """A role allowed no connection at all: every login fails with 53300."""
    async with Lifecycle(DatabaseSettings(url=postgresql_url, engines="async")) as admin:
        async with admin.async_session() as session:
            await session.exec(text(f"DROP ROLE IF EXISTS {LIMITED_ROLE}"))
            await session.exec(text(f"CREATE ROLE {LIMITED_ROLE} LOGIN CONNECTION LIMIT 0"))
        try:
            yield LIMITED_ROLE
        finally:
            async with admin.async_session() as session:
                await session.exec(text(f"DROP ROLE {LIMITED_ROLE}"))


@ENGINES
async def test_too_many_connections_is_retried(
    postgresql_url: str, engines: str, limited_role: str
) -> None:
    url = url_with(postgresql_url, username=limited_role)
    with anyio.fail_after(15):
        message = await start(url, engines, startup_timeout=1.0)
    assert "did not become ready within 1s" in message
    assert "too many connections" in message
