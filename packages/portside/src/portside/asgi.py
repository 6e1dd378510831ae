"""The unit of work at the ASGI level, shared by every integration.

:class:`UnitOfWorkMiddleware` gives each HTTP request a lazily opened
:class:`~portside.UnitOfWork` and ends it when the app sends
``http.response.start``, the only moment the real status is known and the
client has not been told anything yet:

* status < 400 (3xx included unless ``commit_redirects=False``): commit, then
  let the response start; if the commit fails, roll back and send a 5xx instead;
* status >= 400: roll back;
* the app raised before starting a response: roll back; a database that cannot
  serve (exhausted pool, lost connection) is answered with 503, anything else is
  re-raised for the framework or server to report.

With read replicas (:mod:`portside.replicas`) it also reads the request's
consistency token (:mod:`portside.consistency`), adds a new one to the response of
a unit that committed a write, and runs a safe-method request once more on the
primary when its replica failed before the response started.

A client that disconnects before the response started gets nothing: its unit's
statements are stopped on the database server and the unit rolls back
(:mod:`portside.disconnects`).

Whatever happens, cancellation included, the unit ends before the middleware
returns. Framework-neutral: it knows ASGI and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside.consistency import read_token, token_headers
from portside.database import one_line
from portside.disconnects import CLIENT_GONE_KEY, Inbox, Watch, watch_request
from portside.errors import (
    LifecycleStateError,
    NoRequestSessionError,
    PartialCommitError,
    PortsideError,
    is_database_unavailable,
)
from portside.failures import classify
from portside.lifecycle import Databases, Lifecycle
from portside.retries import DEFAULT_MAX_BODY, Retries, RetryPolicy
from portside.urls import scrub

if TYPE_CHECKING:
    from portside.unit_of_work import UnitOfWork

__all__ = [
    "DATABASE_ERRORS",
    "LIFECYCLE_STATE_KEY",
    "SAFE_METHODS",
    "UNIT_OF_WORK_KEY",
    "WEBSOCKET_SESSION_MESSAGE",
    "ASGIApp",
    "ErrorReply",
    "LifecycleLifespan",
    "LifecycleLookup",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "UnitOfWorkMiddleware",
    "error_reply",
    "error_response",
    "lifecycle_from_state",
    "lifespan_state",
    "send_error",
    "unit_of_work_from_scope",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LifecycleLookup = Callable[[Scope], "Lifecycle"]

#: Key of the request's unit of work in the ASGI scope.
UNIT_OF_WORK_KEY = "portside.unit_of_work"
#: Key of the lifecycle in lifespan state (and so in every request's ``scope["state"]``).
LIFECYCLE_STATE_KEY = "portside.lifecycle"
#: Exception types that may be the database's failure: integrations register a
#: handler for each that answers it (503, 409, 504: :func:`error_reply`) and lets a
#: bug through to the framework (asyncpg raises bare ``OSError`` subclasses).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeoutError,
    PortsideError,
    OSError,
)
#: Key of the database failure an integration answered (see :func:`record_failure`).
FAILURE_KEY = "portside.failure"
#: Methods whose units of work are hinted read-only (concurrent reads on SQLite).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

logger = logging.getLogger("portside")

#: Called with the status of every reply :func:`error_reply` substitutes (telemetry
#: adds its counter here when a database turns it on; empty otherwise).
error_reply_observers: list[Callable[[int], None]] = []


def lifecycle_from_state(scope: Scope) -> Lifecycle:
    """Find the lifecycle a portside lifespan put into lifespan state.

    Lifespan state reaches every request and websocket of the app, and of the apps
    mounted inside it, which is why a mounted app finds its outer app's lifecycle.
    """
    lifecycle: Lifecycle | None = (scope.get("state") or {}).get(LIFECYCLE_STATE_KEY)
    if lifecycle is not None:
        return lifecycle
    if scope.get("root_path"):
        raise LifecycleStateError(
            f"No portside lifecycle for this request to the app mounted at "
            f"{scope['root_path']!r}: the server runs only the outermost app's lifespan, "
            "never a mounted app's, so the databases of portside installed on the "
            "mounted app were never started. Install portside on the outer app instead "
            "(e.g. portside_fastapi.install(outer_app, ...)); mounted apps then share it."
        )
    raise LifecycleStateError(
        "No portside lifecycle in this request's state. Install portside on the app "
        "(portside_fastapi.install(app, ...), portside_starlette.install(app, ...) or "
        "Litestar(plugins=[PortsidePlugin(...)])), and run it with a server or test "
        "client that runs the lifespan and supports lifespan state (uvicorn, hypercorn, "
        "granian, `with TestClient(app):`)."
    )


#: A lifespan that runs inside portside's and receives the running lifecycle.
LifecycleLifespan = Callable[[Lifecycle], AbstractAsyncContextManager[Mapping[str, Any] | None]]


@asynccontextmanager
async def lifespan_state(
    databases: Databases, *lifespans: LifecycleLifespan
) -> AsyncIterator[dict[str, Any]]:
    """Run one app start: a new :class:`~portside.Lifecycle`, then ``lifespans`` inside it.

    Each of ``lifespans`` is called with the running lifecycle and entered in
    order (and exited in reverse); the state they yield is merged. Yields the
    lifespan state to hand the server, with the lifecycle under
    :data:`LIFECYCLE_STATE_KEY`. A new lifecycle per start means an app started
    again (as test clients do) gets fresh engines, and state (not a module global)
    means two apps in one process never share them.
    """
    async with Lifecycle(databases) as lifecycle, AsyncExitStack() as stack:
        state: dict[str, Any] = {}
        for lifespan in lifespans:
            own_state = await stack.enter_async_context(lifespan(lifecycle))
            state.update(own_state or {})
        state[LIFECYCLE_STATE_KEY] = lifecycle
        yield state


#: Why a websocket gets no request session, and what to do instead.
WEBSOCKET_SESSION_MESSAGE = (
    "A websocket has no request session: its connection can stay open for hours, and "
    "a session held that long would keep a database connection (and its transaction) "
    "from everyone else. Open a short unit of work per message instead:\n\n"
    "    async with lifecycle.async_session() as session:\n"
    "        ...  # committed when the block ends\n\n"
    "with the lifecycle from your integration's get_lifecycle(websocket)."
)


def unit_of_work_from_scope(scope: Scope) -> UnitOfWork:
    """The request's unit of work, as :class:`UnitOfWorkMiddleware` stored it."""
    try:
        unit: UnitOfWork = scope[UNIT_OF_WORK_KEY]
    except KeyError:
        if scope.get("type") == "websocket":
            raise NoRequestSessionError(WEBSOCKET_SESSION_MESSAGE) from None
        lifecycle_from_state(scope)  # says what is missing, if it is the lifecycle
        raise LifecycleStateError(
            "This request has no portside unit of work: install portside on the app "
            "(see the README of your framework's portside integration)."
        ) from None
    return unit


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """What portside answers instead of the app's response when database work failed."""

    status: int
    body: dict[str, str]
    headers: dict[str, str]


def error_response(exc: BaseException) -> tuple[int, dict[str, str]]:
    """Status and JSON body answering a request whose database work failed.

    From the table in :mod:`portside.failures`; its ``classify(exc).headers`` are
    the headers (``Retry-After``) that go with them.
    """
    if isinstance(exc, PartialCommitError):
        # Never "try again": repeating the request would repeat what did commit.
        return 500, {"detail": str(exc).split(" (portside")[0] + "."}
    failure = classify(exc)
    return failure.status, {"detail": failure.detail}


def error_reply(exc: BaseException, *, instead_of: str) -> ErrorReply:
    """The reply portside substitutes for ``exc``, logged as one line that names the cause.

    Every integration answers through this, so every substituted response leaves
    the same line in the server's output (no URL, no secret, no SQL parameters),
    whatever logging the app configured. ``instead_of`` says what the client
    would otherwise have got, e.g. ``"the app's 201"``.
    """
    status, body = error_response(exc)
    for observe in error_reply_observers:
        observe(status)
    headers = {} if isinstance(exc, PartialCommitError) else classify(exc).headers
    cause = "" if isinstance(exc, PartialCommitError) else f"{classify(exc).cause}: "
    logger.warning(
        "portside answered %d instead of %s: %s%s",
        status,
        instead_of,
        cause,
        scrub(one_line(exc)),
        exc_info=logger.isEnabledFor(logging.DEBUG) and exc,
    )
    return ErrorReply(status, body, headers)


async def send_error(send: Send, exc: BaseException, *, instead_of: str) -> None:
    """Send :func:`error_reply` for ``exc`` as a complete JSON response."""
    reply = error_reply(exc, instead_of=instead_of)
    payload = json.dumps(reply.body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *((name.lower().encode(), value.encode()) for name, value in reply.headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@dataclass(frozen=True, slots=True)
class TransactionOptions:
    """A route's opt-in: retries, isolation level and deadline of its unit of work.

    Integrations build one from their ``transaction(...)`` and apply it with
    :meth:`apply` before the route's code runs (see :meth:`UnitOfWork.configure`).
    """

    retries: Retries = None
    isolation_level: str | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        RetryPolicy.of(self.retries)  # fails now, at import, rather than per request

    def apply(self, scope: Scope) -> None:
        """Configure the request's unit of work (from ``scope``) with these options."""
        unit_of_work_from_scope(scope).configure(
            retries=self.retries, isolation_level=self.isolation_level, deadline=self.deadline
        )


def record_failure(scope: Scope, exc: BaseException) -> None:
    """Note that the request's database work failed with ``exc`` (its reply follows).

    Integrations call it from the handlers that answer database errors, so that
    the middleware can tell a 409 that lost a race (to retry, if the route opted
    in) from any other.
    """
    scope[FAILURE_KEY] = exc


def answer_database_error(scope: Scope, exc: BaseException) -> ErrorReply | None:
    """The reply for a database's failure (recorded for retries); ``None`` for a bug."""
    if not is_database_unavailable(exc):
        return None
    record_failure(scope, exc)
    if scope.get(CLIENT_GONE_KEY):
        # Its statement was stopped for a client that has gone: nobody gets this
        # reply, and the middleware logs the disconnect instead.
        status, body = error_response(exc)
        return ErrorReply(status, body, {})
    return error_reply(exc, instead_of="an error the app raised")


class UnitOfWorkMiddleware:
    """Pure ASGI middleware ending each request's unit of work before the response.

    ``lifecycle`` finds the running :class:`~portside.Lifecycle` for a request; the
    default reads lifespan state, where the portside lifespans put it. ``options``,
    for frameworks whose middleware runs after routing, reads a route's
    :class:`TransactionOptions` from the scope.

    A request is run again, with a fresh unit of work and its body replayed, in two
    cases, both only before its response started: a route that opted in to retries
    (its unit's ``retry_policy``, set through the integration's ``transaction(...)``)
    lost a race (serialization failure, deadlock), after a backoff; or a read-only
    request's read replica failed, once, on the primary. After-commit and
    after-rollback callbacks run once the response was sent. A unit that committed
    a write on a database with replicas gives the client a consistency token.

    A client that disconnects before the response started: the unit's statements
    are stopped on the server, the request is cancelled, the unit rolls back, and
    nothing is sent (:mod:`portside.disconnects`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycle: LifecycleLookup = lifecycle_from_state,
        commit_redirects: bool = True,
        options: Callable[[Scope], TransactionOptions | None] | None = None,
    ) -> None:
        self.app = app
        self._lifecycle = lifecycle
        self._options = options
        self._commit_below = 400 if commit_redirects else 300

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or UNIT_OF_WORK_KEY in scope:
            # Not a request, or one an outer app's portside already gives a unit of work.
            await self.app(scope, receive, send)
            return
        inbox = Inbox(receive, DEFAULT_MAX_BODY)
        watch = watch_request(inbox)
        try:
            gone = await self._run(scope, inbox, send, watch)
        except asyncio.CancelledError:
            # The watch cancelled the request for its client's disconnect; any other
            # cancellation (also) pending goes on.
            if watch is None or not watch.cancelled or watch.task.uncancel():
                raise
            gone = True
        finally:
            if watch is not None:
                watch.close()
        if gone:
            logger.warning(
                "portside answered nothing to %s %s: the client disconnected before the "
                "response started; its unit of work rolled back",
                scope["method"],
                scope.get("path", ""),
            )

    async def _run(self, scope: Scope, inbox: Inbox, send: Send, watch: Watch | None) -> bool:
        """Run the request's attempts; whether its client left before the response."""
        lifecycle = self._lifecycle(scope)
        writes = scope["method"] not in SAFE_METHODS
        has_replicas = lifecycle.has_replicas
        positions = read_token(scope["headers"]) if has_replicas else None
        # Kept for a retry: the scope before the app changed it, and the body it read.
        pristine = dict(scope)
        attempt = 1
        on_primary = False
        while True:
            unit = lifecycle.unit_of_work(writes=writes, positions=positions, request=scope)
            if on_primary:
                unit.use_primary()
            scope[UNIT_OF_WORK_KEY] = unit
            if self._options is not None and (options := self._options(scope)) is not None:
                options.apply(scope)
            again = await self._attempt(
                scope,
                inbox,
                send,
                unit,
                attempt,
                watch=watch,
                token=positions or {},
                replica_may_fail=has_replicas and not writes and not on_primary,
            )
            if again is None:
                return False
            if again == _GONE or inbox.disconnected:
                return unit.opened
            unit.retried("conflict" if again != _ON_PRIMARY else "replica")
            if again == _ON_PRIMARY:
                on_primary = True
                logger.warning(
                    "portside retries %s %s on the primary: its replica failed",
                    scope["method"],
                    scope.get("path", ""),
                )
            else:
                await anyio.sleep(again.delay(attempt))
                attempt += 1
                logger.info("portside runs a request that lost a race again (attempt %d)", attempt)
            scope = dict(pristine)
            inbox.rewind()

    async def _attempt(  # noqa: PLR0915 - one attempt's states, kept in one place
        self,
        scope: Scope,
        inbox: Inbox,
        send: Send,
        unit: UnitOfWork,
        attempt: int,
        *,
        watch: Watch | None,
        token: Mapping[str, int],
        replica_may_fail: bool,
    ) -> RetryPolicy | Literal["primary", "gone"] | None:
        """Run the app once; say how to run it again (a policy, or on the primary), if so.

        ``"gone"``: the client disconnected before the response started; the unit
        rolled back and nothing was sent.
        """
        started = False
        replaced = False
        discarded = False
        on_primary = False
        gone = False

        def retries(exc: BaseException | None) -> bool:
            """Whether this attempt lost a race that the route asked to retry."""
            policy = unit.retry_policy
            return (
                exc is not None
                and policy is not None
                and inbox.replayable
                and inbox.size <= policy.max_body
                and policy.retries(exc, attempt)
            )

        def replica_failed() -> bool:
            return replica_may_fail and inbox.replayable and unit.replica_failed

        def responding() -> None:
            if watch is not None:
                watch.responding()

        async def send_after_unit(message: Message) -> None:
            nonlocal started, replaced, discarded, on_primary, gone
            if replaced or discarded or gone:
                return  # replaced by an error, retried, or nobody is listening any more
            if message["type"] == "http.response.start":
                status = message["status"]
                if inbox.disconnected:
                    gone = True  # nobody to tell: never commit what nobody will hear of
                    await unit.finish(commit=False, run_hooks=False)
                    return
                if status >= 500 and replica_failed():
                    discarded = on_primary = True
                    await unit.finish(commit=False, run_hooks=False)
                    return
                try:
                    await unit.finish(commit=status < self._commit_below, run_hooks=False)
                except Exception as exc:
                    if retries(exc):
                        discarded = True
                        return
                    replaced = True
                    responding()
                    await send_error(send, exc, instead_of=f"the app's {status}")
                    return
                if status >= self._commit_below and retries(scope.get(FAILURE_KEY)):
                    discarded = True
                    return
                started = True
                responding()
                if unit.commit_positions:
                    merged = dict(token)
                    for name, position in unit.commit_positions.items():
                        merged[name] = max(merged.get(name, position), position)
                    message["headers"] = [*message.get("headers", ()), *token_headers(merged)]
            await send(message)

        if watch is not None:
            watch.attempt(unit, scope)
        try:
            await self.app(scope, inbox.receive, send_after_unit)
        except Exception as exc:
            if watch is not None:
                watch.attempt_over()
            await unit.finish(commit=False, run_hooks=False)
            if discarded:
                pass  # this attempt is over, whatever it raised
            elif not (started or replaced) and (gone or inbox.disconnected):
                gone = True
                if not isinstance(exc, DATABASE_ERRORS):
                    raise  # a bug, not the statement stopped for the client
            elif not (started or replaced) and replica_failed():
                discarded = on_primary = True
            elif not (started or replaced) and retries(exc):
                discarded = True
            elif started or not is_database_unavailable(exc):
                raise
            else:
                responding()
                await send_error(send, exc, instead_of="an error the app raised")
        finally:
            if watch is not None:
                watch.attempt_over()
            if not unit.ended:  # the app returned without starting a response
                await unit.finish(commit=False, run_hooks=False)
            await unit.run_hooks()
            # The scope holds the unit: without this, every request's unit and
            # sessions would wait for the cyclic garbage collector.
            unit.request = None
        if gone:
            return _GONE
        if not discarded:
            return None
        return _ON_PRIMARY if on_primary else unit.retry_policy


#: What :meth:`UnitOfWorkMiddleware._attempt` answers for "again, on the primary".
_ON_PRIMARY: Literal["primary"] = "primary"
#: What it answers for "the client has gone": nothing was sent, the unit rolled back.
_GONE: Literal["gone"] = "gone"
