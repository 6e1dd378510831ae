"""Pytest plugin and conformance suite for portside.

The pytest plugin (:mod:`portside_testing.plugin`, loaded from its entry point)
gives the fixtures; this package's public names are for code that drives an app
itself:

- :func:`open_client` / :class:`Client` (:class:`ClientFactory` types the
  ``portside_client`` fixture) and the :class:`Response` they return;
- :func:`open_sync_client` / :func:`open_async_client`: ``httpx`` clients on an app
  (:class:`SyncClient`, :class:`AsyncClient`; the ``portside_sync_client`` and
  ``portside_async_client`` fixtures);
- :class:`OuterTransaction`, the binding that rolls back everything a test's
  lifecycles commit, and :class:`LifecycleRecorder`, the one that only records them;
- :func:`check_for_leaks` / :func:`find_leaks` and :class:`ConnectionLeakError`;
- :class:`AppRunner`, the in-process ASGI driver (:class:`LifespanError`);
- :func:`capture_on_commit` (:class:`CapturedCallbacks`), which lists after-commit
  callbacks instead of running them (also the ``portside_on_commit`` fixture);
- :class:`ConformanceSuite` and :class:`Harness`, for a framework integration's own
  conformance tests (imported on first use: they need pytest).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from portside_testing.asgi import AppRunner, LifespanError, Response
from portside_testing.client import Client, ClientFactory, LifecycleRecorder, open_client
from portside_testing.http_client import (
    AsyncClient,
    AsyncClientFactory,
    SyncClient,
    SyncClientFactory,
    open_async_client,
    open_sync_client,
)
from portside_testing.leaks import ConnectionLeakError, check_for_leaks, find_leaks
from portside_testing.on_commit import CapturedCallbacks, capture_on_commit
from portside_testing.outer_transaction import OuterTransaction

if TYPE_CHECKING:
    from portside_testing.conformance import ConformanceSuite, Harness

__all__ = [
    "AppRunner",
    "AsyncClient",
    "AsyncClientFactory",
    "CapturedCallbacks",
    "Client",
    "ClientFactory",
    "ConformanceSuite",
    "ConnectionLeakError",
    "Harness",
    "LifecycleRecorder",
    "LifespanError",
    "OuterTransaction",
    "Response",
    "SyncClient",
    "SyncClientFactory",
    "capture_on_commit",
    "check_for_leaks",
    "find_leaks",
    "open_async_client",
    "open_client",
    "open_sync_client",
]

_CONFORMANCE = frozenset({"ConformanceSuite", "Harness"})


def __getattr__(name: str) -> Any:
    # The conformance suite imports pytest and its models: only when asked for.
    if name in _CONFORMANCE:
        return getattr(importlib.import_module("portside_testing.conformance"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
