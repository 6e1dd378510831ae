"""The harness: what an integration provides so the conformance suite can test it.

A harness builds an ASGI app, in its framework's idiomatic style, that exposes the
scenario endpoints below using the integration under test. The suite runs the
app's lifespan itself, drives requests through ASGI, and asserts the same outcomes
for every framework, database and session mode.

Endpoints (``mode`` decides whether handlers use async or sync sessions; sync
handlers are the framework's sync handlers, run in worker threads). ``Item`` and
``Child`` are :mod:`portside_testing.conformance.models`.

==========================================  ============================================
``POST /items`` ``{"name": str}``           add an Item; 201 ``{"id": int, "name": str}``
``GET /items/{id}``                         200 ``{"id", "name"}``; 404 if absent
``GET /items``                              200 ``{"names": [str, ...]}`` (sorted)
``POST /items/raise`` ``{"name"}``          add an Item, flush, then raise ``RuntimeError``
``POST /items/http-error`` ``{"name"}``     add, flush, raise the framework's HTTP 409
``POST /items/return-error`` ``{"name"}``   add, flush, *return* a 422 JSON response
``POST /items/redirect`` ``{"name"}``       add an Item; return a 303 to ``/items``
``POST /items/deferred`` ``{"name"}``       add a Child whose parent does not exist
                                            (the FK is DEFERRABLE INITIALLY DEFERRED,
                                            so only COMMIT fails); return 201
``POST /items/swallowed`` ``{"name"}``      add an Item named ``<name>-kept`` and flush, then
                                            insert an Item named ``name`` (a duplicate:
                                            it fails), catch that ``IntegrityError`` and
                                            return 201 anyway
``POST /items/slow`` ``{"name", "seconds"}``  add, flush, sleep ``seconds``, return 201
``GET /untouched``                          200 ``{"ok": true}``; never asks for a session
``GET /same-session``                       asks for the session twice in one request
                                            (two parameters/dependencies) and returns
                                            ``{"same": bool}`` (identity)
``POST /items/background`` ``{"name"}``     add an Item, return 201, and schedule the
                                            framework's background task that uses the
                                            *request's* session after the response;
                                            it records the exception type name it got
                                            (or ``"none"``) in ``Harness.background_results``
``GET /health``                             the integration's ready-made readiness route
                                            (added by its install, not by the harness)
``GET /sync-on-loop``                       an *async* handler that asks for the request's
                                            *sync* session and queries ``Item`` on the
                                            event loop (it must fail: 500)
``WEBSOCKET /ws/items``                     for each JSON message ``{"name"}``: open a unit
                                            of work of its own from the lifecycle (async
                                            mode: ``async_session()``; sync mode:
                                            ``session()`` in a worker thread), add an Item,
                                            and after the unit ended reply ``{"id": int}``
``WEBSOCKET /ws/request-session``           ask for the *request's* session the way HTTP
                                            handlers do; reply ``{"error": <exception type
                                            name>}`` (or ``{"error": "none"}``)
``GET /analytics/count``                    200 ``{"count": int}`` counting Items in the
                                            second database named ``"analytics"`` (only
                                            when the app was built with two databases)
==========================================  ============================================

Handlers never commit or roll back themselves: that is the integration's job.

What every integration must do (the contract these scenarios check):

1. One install (a call or a plugin) wires everything; nothing can be forgotten.
2. Each app start runs a new :class:`~portside.Lifecycle` (engines built and checked
   before the app serves; drained and disposed after), and the app's own lifespan
   runs inside it and receives it.
3. The lifecycle is reachable from a request, a websocket and the app, the same way.
4. Every HTTP request gets a lazily opened unit of work from
   :class:`portside.asgi.UnitOfWorkMiddleware`, placed *outermost*, so the commit
   decision reads the status the client finally receives.
5. Handlers get the request's async or sync session, of the default or a named
   database, from that unit (``portside.asgi.unit_of_work_from_scope``); never from
   an engine or a sessionmaker of their own.
6. A websocket gets no request session (the core's ``NoRequestSessionError``); it
   opens a unit of work per message.
7. A database failure is answered with its status (503, 409, 504) and logged in one line
   (``portside.asgi.error_reply``); a bug is left to the framework (500).
8. A readiness route at ``/health`` by default (configurable, can be turned off).
9. State lives on the app or in lifespan state, never in a module global.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from portside import DatabaseSettings, Lifecycle

__all__ = [
    "ASGIApp",
    "Harness",
    "Mode",
]

Mode = Literal["async", "sync"]
ASGIApp = Any


class Harness(Protocol):
    """One framework integration, as the conformance suite sees it."""

    #: Short name shown in test ids, e.g. ``"fastapi"``.
    name: str

    #: Filled by the background-task endpoint: exception type names, in order.
    #: The suite clears it (in place) before each scenario, so apps may keep a
    #: reference to this very list.
    background_results: list[str]

    def build_app(
        self, databases: DatabaseSettings | Mapping[str, DatabaseSettings], mode: Mode
    ) -> ASGIApp:
        """A new app (new state) exposing the endpoints above with ``mode`` sessions."""
        ...

    def lifecycle(self, app: ASGIApp) -> Lifecycle:
        """The running app's lifecycle, found the integration's way (``get_lifecycle(app)``)."""
        ...

    def mount(self, app: ASGIApp) -> ASGIApp | None:
        """An app of the same framework, *without* portside, mounting ``app`` at ``/inner``.

        ``None`` where the framework does not compose apps by mounting them.
        """
        ...
