"""Adapters: the concrete ports, one module per backend, chosen from the URL.

A new backend is one new module with a ``build_<backend>`` function registered in
``_BACKENDS`` below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from portside.adapters.base import AsyncAdapter, PoolStatus, SyncAdapter
from portside.adapters.postgresql import build_postgresql
from portside.adapters.sqlite import build_sqlite
from portside.errors import ConfigurationError, DriverMissingError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from portside.settings import DatabaseSettings

__all__ = ["AsyncAdapter", "PoolStatus", "SyncAdapter", "build_adapters"]

_Builder = Callable[
    ["DatabaseSettings", "URL | None", "URL | None"],
    tuple[SyncAdapter | None, AsyncAdapter | None],
]

# backend name -> (its builder, the extra that installs its drivers)
_BACKENDS: dict[str, tuple[_Builder, str]] = {
    "sqlite": (build_sqlite, "sqlite"),
    "postgresql": (build_postgresql, "postgresql"),
}


def _builder(backend: str) -> tuple[_Builder, str]:
    try:
        return _BACKENDS[backend]
    except KeyError:
        supported = ", ".join(sorted(_BACKENDS))
        raise ConfigurationError(
            f"portside has no adapter for the {backend!r} backend; supported: {supported}."
        ) from None


def build_adapters(settings: DatabaseSettings) -> tuple[SyncAdapter | None, AsyncAdapter | None]:
    """Build the sync and/or async adapter ``settings.engines`` asks for.

    Raises :class:`~portside.errors.DriverMissingError` naming the extra to install
    when the URL's driver package is missing.
    """
    sync_url = settings.sync_url_object if settings.engines != "async" else None
    async_url = settings.async_url_object if settings.engines != "sync" else None
    backend = settings.sync_url_object.get_backend_name()
    builder, extra = _builder(backend)
    try:
        return builder(settings, sync_url, async_url)
    except ImportError as exc:
        missing = exc.name or "a driver"
        raise DriverMissingError(
            f"The database driver {missing!r} is not installed. Install it with the "
            f'{extra!r} extra: pip install "portside[{extra}]" (or uv add "portside[{extra}]").'
        ) from None
