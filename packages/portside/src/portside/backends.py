"""The backends portside can run: which adapters to build for which URLs.

A backend is a module that implements the ports (:mod:`portside.ports`) and a
*builder* that makes its adapters from the settings; registering it here is all
the core needs to run it, URLs included. SQLite and PostgreSQL are registered by
:mod:`portside.adapters`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portside.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from portside.ports import AsyncSessionPort, SessionPort
    from portside.settings import DatabaseSettings

__all__ = ["Backend", "Builder", "backend_for", "register_backend", "registered_backends"]

#: Builds the adapters for the URLs asked for (``None``: that kind is not wanted).
Builder = Callable[
    ["DatabaseSettings", "URL | None", "URL | None"],
    "tuple[SessionPort | None, AsyncSessionPort | None]",
]


@dataclass(frozen=True, slots=True)
class Backend:
    """One database backend, keyed by SQLAlchemy's backend (dialect) name."""

    #: SQLAlchemy's backend name, as ``URL.get_backend_name()`` returns it.
    name: str
    #: Makes the adapters; see :data:`Builder`.
    build: Builder
    #: ``dialect+driver`` of the synchronous engine a derived URL uses.
    sync_driver: str
    #: ``dialect+driver`` of the asyncio engine a derived URL uses.
    async_driver: str
    #: The ``portside[...]`` extra that installs the drivers, for error messages.
    extra: str | None = None


_registry: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Make URLs of ``backend.name`` run on ``backend`` (replacing any earlier one)."""
    _registry[backend.name] = backend


def registered_backends() -> tuple[str, ...]:
    """The names of every registered backend."""
    _load_builtin()
    return tuple(_registry)


def backend_for(name: str) -> Backend:
    """The backend registered for ``name``; raises :class:`ConfigurationError` if none."""
    _load_builtin()
    try:
        return _registry[name]
    except KeyError:
        supported = ", ".join(sorted(_registry))
        raise ConfigurationError(
            f"portside has no adapter for the {name!r} backend; supported: {supported}. "
            "A new backend is registered with portside.register_backend()."
        ) from None


def _load_builtin() -> None:
    # The built-in adapters register themselves when imported; importing them here,
    # late, keeps URL parsing free of engine code.
    import portside.adapters  # noqa: F401, PLC0415
