"""Helpers shared by the integration tests: databases, row counts, raw websockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool
from sqlmodel import col

from portside import DatabaseSettings, Lifecycle
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]


def sqlite(tmp_path: Path, name: str = "app", **overrides: Any) -> DatabaseSettings:
    """Settings of a real SQLite file in ``tmp_path``."""
    return DatabaseSettings(url=f"sqlite:///{tmp_path / name}.db", **overrides)


def names_in(settings: DatabaseSettings) -> list[str]:
    """The item names the database holds, read through an engine of the test's own.

    A separate engine (no pool, no portside) sees only what was really committed.
    """
    engine = create_engine(settings.url or "", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if not engine.dialect.has_table(connection, Item.__tablename__):
                return []
            return sorted(connection.execute(select(col(Item.name))).scalars())
    finally:
        engine.dispose()


def count_in(settings: DatabaseSettings) -> int:
    """How many items the database holds, read through an engine of the test's own."""
    engine = create_engine(settings.url or "", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(Item)).scalar_one())
    finally:
        engine.dispose()


@asynccontextmanager
async def create_tables(app: Any, lifecycle: Lifecycle) -> AsyncIterator[None]:
    """An app's own lifespan creating the test tables through the lifecycle it receives."""
    for name in lifecycle.names:
        await lifecycle.database(name).create_all(metadata)
    yield


def checked_out(lifecycle: Lifecycle) -> int:
    """Connections checked out of every pool of every database right now."""
    total = 0
    for name in lifecycle.names:
        for status in lifecycle.database(name).pool_status().values():
            assert status.checked_out is not None, "the tests expect pools that count"
            total += status.checked_out
    return total


async def websocket_handshake(runner: AppRunner, app: ASGIApp, path: str) -> list[Message]:
    """Open a websocket to ``path`` and return what the app sent; the app's error propagates.

    For endpoints that fail before accepting, which :meth:`AppRunner.websocket` cannot
    open: the app is called directly, with the runner's lifespan state, as a server would.
    """
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "state": dict(runner.state),
    }
    inbox: list[Message] = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent
