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

Whatever happens, cancellation included, the unit ends before the middleware
returns. Framework-neutral: it knows ASGI and nothing else.
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside.database import one_line
from portside.errors import (
    LifecycleStateError,
    NoRequestSessionError,
    PartialCommitError,
    PortsideError,
    is_database_unavailable,
)
from portside.failures import classify
from portside.lifecycle import Databases, Lifecycle
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
#: Methods whose units of work are hinted read-only (concurrent reads on SQLite).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

logger = logging.getLogger("portside")


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


class UnitOfWorkMiddleware:
    """Pure ASGI middleware ending each request's unit of work before the response.

    ``lifecycle`` finds the running :class:`~portside.Lifecycle` for a request; the
    default reads lifespan state, where the portside lifespans put it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycle: LifecycleLookup = lifecycle_from_state,
        commit_redirects: bool = True,
    ) -> None:
        self.app = app
        self._lifecycle = lifecycle
        self._commit_below = 400 if commit_redirects else 300

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or UNIT_OF_WORK_KEY in scope:
            # Not a request, or one an outer app's portside already gives a unit of work.
            await self.app(scope, receive, send)
            return
        unit = self._lifecycle(scope).unit_of_work(writes=scope["method"] not in SAFE_METHODS)
        scope[UNIT_OF_WORK_KEY] = unit
        started = False
        replaced = False

        async def send_after_unit(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the app's own response was replaced by an error
            if message["type"] == "http.response.start":
                started = True
                try:
                    await unit.finish(commit=message["status"] < self._commit_below)
                except Exception as exc:
                    replaced = True
                    await send_error(send, exc, instead_of=f"the app's {message['status']}")
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_after_unit)
        except Exception as exc:
            await unit.finish(commit=False)
            if started or not is_database_unavailable(exc):
                raise
            await send_error(send, exc, instead_of="an error the app raised")
        finally:
            if not unit.ended:  # the app returned without starting a response
                await unit.finish(commit=False)
