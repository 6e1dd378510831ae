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
``POST /items/runaway`` ``{"name"}``        add an Item, flush, then run
                                            :func:`runaway_statement` (no deadline);
                                            201 ``{"id", "name"}`` if it ever ends
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
``GET /replica/where``                      200 ``{"replica": bool}``: ``SELECT
                                            pg_is_in_recovery()`` on the request's session
                                            (PostgreSQL only; the replica scenarios)
``GET /replica/primary``                    the same after the integration's
                                            ``use_primary(request)``: must be the primary
``GET /replica/write``                      adds an Item and flushes in a GET (routed to a
                                            replica: must fail with a 500)
``GET /analytics/count``                    200 ``{"count": int}`` counting Items in the
                                            second database named ``"analytics"`` (only
                                            when the app was built with two databases)
``POST /items/hooked`` ``{"name", "status"}``  add an Item, flush, register (with
                                            ``portside.on_commit(session, ...)`` and
                                            ``on_rollback``) callbacks appending
                                            ``"commit:<name>"`` / ``"rollback:<name>"`` to
                                            ``Harness.hook_events``; return ``{"id",
                                            "name"}`` with status ``status``
``POST /counter/increment`` ``{"by": int}``  opted in with the integration's
                                            ``transaction(retries=RETRY_POLICY,
                                            isolation_level="SERIALIZABLE")``: read
                                            ``Counter`` 1, sleep :data:`RACE_WINDOW`, write
                                            value + ``by``; 200 ``{"value": int}``
``POST /counter/increment-once`` ``{"by"}``  the same with ``transaction(isolation_level=
                                            "SERIALIZABLE")`` only: no retries
``POST /counter/transfer``                  opted in with ``transaction(retries=RETRY_POLICY)``;
``{"first": int, "second": int}``           add 1 to ``Counter`` ``first``, sleep
                                            :data:`LOCK_WINDOW`, add 1 to ``second``
                                            (two requests in opposite orders deadlock);
                                            200 ``{"ok": true}``
``POST /counter/transfer-once``             the same without ``transaction(...)``
``GET /slow-query``                         opted in with ``transaction(deadline=
                                            SLOW_QUERY_DEADLINE)``; runs
                                            :func:`runaway_statement` on the default
                                            database; 200 ``{"ok": true}`` if it ever ends
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

from portside import DatabaseSettings, Lifecycle, RetryPolicy

#: The retries of ``POST /counter/increment``: enough for every racing request.
RETRY_POLICY = RetryPolicy(attempts=50, backoff=0.005, max_backoff=0.1)
#: Seconds ``/counter`` handlers wait between their read and their write.
RACE_WINDOW = 0.02
#: Seconds ``/counter/transfer`` holds its first row's lock before taking the second's.
LOCK_WINDOW = 0.2
#: The deadline of ``GET /slow-query``, in seconds.
SLOW_QUERY_DEADLINE = 0.5


def runaway_statement(dialect: str) -> str:
    """SQL that runs for minutes on ``dialect`` (``"postgresql"`` or ``"sqlite"``)."""
    if dialect == "postgresql":
        return "SELECT pg_sleep(600)"
    return "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"


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

    #: Filled by ``POST /items/hooked``'s callbacks; cleared like ``background_results``.
    hook_events: list[str]

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
