"""Adapters: the ports of the built-in backends, SQLite and PostgreSQL.

Each backend module implements :mod:`portside.ports` and has a ``build_<backend>``
function; both are registered here with :func:`portside.register_backend`, which
is also how a third-party backend joins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portside.adapters.base import AsyncAdapter, SyncAdapter
from portside.adapters.postgresql import build_postgresql
from portside.adapters.sqlite import build_sqlite
from portside.backends import Backend, backend_for, register_backend
from portside.errors import DriverMissingError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from portside.ports import AsyncSessionPort, SessionPort
    from portside.settings import DatabaseSettings

__all__ = ["AsyncAdapter", "SyncAdapter", "build_adapters"]

register_backend(Backend("sqlite", build_sqlite, "sqlite", "sqlite+aiosqlite", extra="sqlite"))
register_backend(
    Backend(
        "postgresql",
        build_postgresql,
        "postgresql+psycopg",
        "postgresql+asyncpg",
        extra="postgresql",
    )
)


def _driver_missing(url: URL) -> str | None:
    """The name of ``url``'s DBAPI module if it cannot be imported, else ``None``."""
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        return exc.name or url.get_driver_name()
    return None


def _install_hint(extra: str | None) -> str:
    if extra is None:
        return "Install the driver."
    return f'Install it with: pip install "portside[{extra}]" (or uv add "portside[{extra}]").'


def build_adapters(
    settings: DatabaseSettings, *, asyncio_available: bool = True
) -> tuple[SessionPort | None, AsyncSessionPort | None, str | None]:
    """Build the adapters ``settings.engines`` asks for.

    With ``engines="auto"`` (the default) each kind of engine whose driver is
    installed is built (the async one only when ``asyncio_available``); the third
    value then says why a kind was left out, for the error a unit of work raises
    if it asks for that kind. Explicit kinds whose driver is missing raise
    :class:`~portside.errors.DriverMissingError` naming the extra to install.
    """
    backend = backend_for(settings.sync_url_object.get_backend_name())
    wants_sync = settings.engines in ("auto", "both", "sync")
    wants_async = settings.engines in ("auto", "both", "async")
    sync_url = settings.sync_url_object if wants_sync else None
    async_url = settings.async_url_object if wants_async else None
    left_out: list[str] = []
    if settings.engines == "auto" and async_url is not None and not asyncio_available:
        async_url = None
        left_out.append("async SQLAlchemy runs on asyncio only")
    for kind, url in (("sync", sync_url), ("async", async_url)):
        missing = _driver_missing(url) if url is not None else None
        if missing is None:
            continue
        reason = f"the {kind} driver {missing!r} is not installed"
        if settings.engines != "auto":
            raise DriverMissingError(f"{reason.capitalize()}. {_install_hint(backend.extra)}")
        left_out.append(f"{reason} ({_install_hint(backend.extra)})")
        if kind == "sync":
            sync_url = None
        else:
            async_url = None
    if sync_url is None and async_url is None:
        raise DriverMissingError(
            f"No database driver is installed for {backend.name}: {'; '.join(left_out)}."
        )
    try:
        sync_port, async_port = backend.build(settings, sync_url, async_url)
    except ImportError as exc:  # a dependency of the driver itself
        raise DriverMissingError(
            f"The database driver {exc.name or 'module'!r} could not be imported. "
            f"{_install_hint(backend.extra)}"
        ) from None
    return sync_port, async_port, "; ".join(left_out) or None
