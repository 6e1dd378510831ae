"""PostgreSQL adapters: psycopg 3 (sync) and asyncpg (async).

Defaults: a queue pool sized from the settings, pre-ping on checkout (a connection
the server or a proxy dropped is replaced instead of failing the request) and
recycling, and a bounded connect timeout so startup and pool refills cannot hang.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from portside.adapters.base import AsyncAdapter, SyncAdapter

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from portside.settings import DatabaseSettings


# libpq URL parameters asyncpg rejects, and where asyncpg takes them instead.
_LIBPQ_SERVER_SETTINGS = ("application_name",)
_LIBPQ_SSLMODE = "sslmode"


class PostgreSQLAdapter(SyncAdapter):
    """Synchronous PostgreSQL through psycopg 3."""

    def engine_options(self) -> dict[str, Any]:
        """Pool knobs from the settings plus psycopg's connect timeout (whole seconds)."""
        options = super().engine_options() | self.pooling_options()
        options["connect_args"] = {
            "connect_timeout": max(1, math.ceil(self.settings.connect_timeout))
        }
        return options


class AsyncPostgreSQLAdapter(AsyncAdapter):
    """Asynchronous PostgreSQL through asyncpg.

    asyncpg rejects libpq's ``application_name`` and ``sslmode`` URL parameters; they
    are moved into asyncpg's ``server_settings`` and ``ssl`` so one URL serves both
    engines.
    """

    def __init__(self, settings: DatabaseSettings, url: URL) -> None:
        self._server_settings = {
            key: str(url.query[key]) for key in _LIBPQ_SERVER_SETTINGS if key in url.query
        }
        self._ssl = url.query.get(_LIBPQ_SSLMODE)
        moved = (*_LIBPQ_SERVER_SETTINGS, _LIBPQ_SSLMODE)
        super().__init__(settings, url.difference_update_query(moved))

    def engine_options(self) -> dict[str, Any]:
        """Pool knobs from the settings plus asyncpg's connect timeout."""
        options = super().engine_options() | self.pooling_options()
        options["connect_args"] = {"timeout": self.settings.connect_timeout}
        if self._server_settings:
            options["connect_args"]["server_settings"] = self._server_settings
        if self._ssl is not None:
            options["connect_args"]["ssl"] = str(self._ssl)
        return options


def build_postgresql(
    settings: DatabaseSettings, sync_url: URL | None, async_url: URL | None
) -> tuple[PostgreSQLAdapter | None, AsyncPostgreSQLAdapter | None]:
    """Build the requested PostgreSQL adapters."""
    sync_adapter = PostgreSQLAdapter(settings, sync_url) if sync_url is not None else None
    try:
        async_adapter = (
            AsyncPostgreSQLAdapter(settings, async_url) if async_url is not None else None
        )
    except BaseException:
        if sync_adapter is not None:
            sync_adapter.dispose()
        raise
    return sync_adapter, async_adapter
