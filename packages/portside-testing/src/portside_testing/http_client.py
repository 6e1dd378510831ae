"""httpx clients on an app run in-process: the API httpx and Starlette's TestClient users know.

:func:`open_sync_client` gives an :class:`httpx.Client` (for plain ``def`` tests; the
app runs on an event loop in a background thread, as with Starlette's
``TestClient``) and :func:`open_async_client` an :class:`httpx.AsyncClient`: responses
have ``status_code``, ``json()``, ``text`` and ``headers``; requests take ``json=``,
``data=`` (forms), ``files=``, ``params=``, ``cookies=``. The app's lifespan runs
while the block does, inside the test's :class:`~portside_testing.OuterTransaction`
when there is one (the plugin's fixtures), so everything the app commits is rolled
back at the end; leaks are checked before the app stops.

``client.session()`` is a session for the test itself, on the app's own connection
in the test's transaction: it is not a unit of work, so holding it for the whole
test never blocks the app, and after every request it forgets what it loaded
(``expire_all``), so it never shows rows older than what the app committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    ExitStack,
    asynccontextmanager,
    contextmanager,
)
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio.from_thread
import httpx

from portside import AsyncSession, Lifecycle, Session, current_binding, use_binding
from portside_testing.asgi import AppRunner, ASGIApp
from portside_testing.client import LifecycleRecorder
from portside_testing.leaks import check_for_leaks
from portside_testing.outer_transaction import OuterTransaction

if TYPE_CHECKING:
    from portside_testing.asgi import Receive, Scope, Send

__all__ = [
    "AsyncClient",
    "AsyncClientFactory",
    "SyncClient",
    "SyncClientFactory",
    "open_async_client",
    "open_sync_client",
]

BASE_URL = "http://testserver"


def _with_lifespan_state(app: ASGIApp, runner: AppRunner) -> ASGIApp:
    # httpx's ASGITransport knows no lifespan: give each request the state, as servers do.
    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(runner.state)}
        await app(scope, receive, send)

    return call


def _one(lifecycles: list[Lifecycle]) -> Lifecycle:
    if len(lifecycles) != 1:
        raise LookupError(
            f"The app started {len(lifecycles)} portside lifecycles, not one; "
            "pick one from `client.lifecycles`."
        )
    return lifecycles[0]


def _no_sync_engine(name: str | None) -> LookupError:
    return LookupError(
        f"Database {name or 'default'!r} of the app has no sync engine, so there is no "
        "sync session to give; use the async client's `await client.session()`."
    )


class AsyncClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` on a running app; see :func:`open_async_client`."""

    def __init__(self, lifecycles: list[Lifecycle], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: The lifecycles the app started (one for an app with one portside lifespan).
        self.lifecycles = lifecycles
        self._sessions: list[AsyncSession] = []

    @property
    def lifecycle(self) -> Lifecycle:
        """The app's :class:`~portside.Lifecycle`."""
        return _one(self.lifecycles)

    async def session(self, database: str | None = None) -> AsyncSession:
        """An async session on the app's connection in the test's transaction (see the module).

        Its ``commit()`` releases a SAVEPOINT: the app sees what it commits. Closed
        when the client block ends. Needs the plugin's transaction.
        """
        outer = _outer_of(self.lifecycle)
        port = self.lifecycle.database(database).async_port()
        session = port.new_session(writes=True, bind=await outer.async_connection(port.engine))
        self._sessions.append(session)
        return session

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send ``request``; then expire what the test's sessions loaded."""
        try:
            return await super().send(request, **kwargs)
        finally:
            for session in self._sessions:
                session.expire_all()

    async def _close_sessions(self) -> None:
        for session in self._sessions:
            session.mark_ended()
            await session.close()


class SyncClient(httpx.Client):
    """An :class:`httpx.Client` on an app run in a background thread (:func:`open_sync_client`)."""

    def __init__(
        self, portal: anyio.from_thread.BlockingPortal, lifecycles: list[Lifecycle], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        #: The portal to the app's event loop (run coroutines there with ``portal.call``).
        self.portal = portal
        #: The lifecycles the app started (one for an app with one portside lifespan).
        self.lifecycles = lifecycles
        self._sessions: list[Session] = []

    @property
    def lifecycle(self) -> Lifecycle:
        """The app's :class:`~portside.Lifecycle`."""
        return _one(self.lifecycles)

    def session(self, database: str | None = None) -> Session:
        """A sync session on the app's connection in the test's transaction (see the module).

        Its ``commit()`` releases a SAVEPOINT: the app sees what it commits. Closed
        when the client block ends. Needs the plugin's transaction and a sync engine.
        """
        lifecycle = self.lifecycle
        outer = _outer_of(lifecycle)
        db = lifecycle.database(database)
        if "sync" not in db.kinds:
            raise _no_sync_engine(database)
        port = db.sync_port()
        connection = self.portal.call(outer.sync_connection_async, port.engine)
        session = port.new_session(writes=True, bind=connection)
        self._sessions.append(session)
        return session

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send ``request``; then expire what the test's sessions loaded."""
        try:
            return super().send(request, **kwargs)
        finally:
            for session in self._sessions:
                session.expire_all()

    def _close_sessions(self) -> None:
        for session in self._sessions:
            session.mark_ended()
            session.close()


def _outer_of(lifecycle: Lifecycle) -> OuterTransaction:
    binding = lifecycle.binding
    if not isinstance(binding, OuterTransaction):
        raise LookupError(  # noqa: TRY004 - nothing the caller passed has a wrong type
            "client.session() shares the test's transaction, and this app runs outside "
            "one: use the portside_sync_client / portside_async_client fixtures (or start "
            "the client inside `with OuterTransaction():`)."
        )
    return binding


@asynccontextmanager
async def open_async_client(
    app: Any, *, base_url: str = BASE_URL, raise_app_exceptions: bool = True
) -> AsyncIterator[AsyncClient]:
    """Start ``app``'s lifespan, yield an :class:`AsyncClient` on it, stop it on exit.

    Exceptions the app raises are re-raised by the request unless
    ``raise_app_exceptions=False`` (then: the 500). Before the app stops, its
    lifecycles are checked for leaked connections.
    """
    __tracebackhide__ = True
    binding = current_binding()
    recorder = binding if isinstance(binding, OuterTransaction) else LifecycleRecorder()
    first = len(recorder.lifecycles)
    with ExitStack() as stack:
        if recorder is not binding:
            stack.enter_context(use_binding(recorder))
        async with AppRunner(cast(ASGIApp, app)) as runner:
            transport = httpx.ASGITransport(
                app=_with_lifespan_state(cast(ASGIApp, app), runner),
                raise_app_exceptions=raise_app_exceptions,
            )
            lifecycles = recorder.lifecycles[first:]
            async with AsyncClient(lifecycles, transport=transport, base_url=base_url) as client:
                try:
                    yield client
                finally:
                    await client._close_sessions()
            await runner.wait_idle()
            check_for_leaks(lifecycles, when="when the client exited")


class _PortalTransport(httpx.BaseTransport):
    """Sends each request through an async transport on the portal's event loop."""

    def __init__(
        self, portal: anyio.from_thread.BlockingPortal, transport: httpx.AsyncBaseTransport
    ) -> None:
        self._portal = portal
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the app's loop; read the whole body there."""

        async def send() -> httpx.Response:
            response = await self._transport.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                content=body,
                extensions=response.extensions,
            )

        return self._portal.call(send)


@contextmanager
def open_sync_client(
    app: Any, *, base_url: str = BASE_URL, raise_app_exceptions: bool = True
) -> Iterator[SyncClient]:
    """Start ``app``'s lifespan on a loop in a background thread; yield a :class:`SyncClient`.

    For plain ``def`` tests (it blocks; do not use it on an event loop). Otherwise
    as :func:`open_async_client`.
    """
    __tracebackhide__ = True
    binding = current_binding()
    recorder = binding if isinstance(binding, OuterTransaction) else LifecycleRecorder()
    first = len(recorder.lifecycles)

    @asynccontextmanager
    async def running() -> AsyncIterator[AppRunner]:
        # Entered on the portal's loop: the binding is set there explicitly.
        with use_binding(recorder):
            async with AppRunner(cast(ASGIApp, app)) as runner:
                yield runner
                await runner.wait_idle()

    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running()) as runner,
    ):
        transport = httpx.ASGITransport(
            app=_with_lifespan_state(cast(ASGIApp, app), runner),
            raise_app_exceptions=raise_app_exceptions,
        )
        lifecycles = recorder.lifecycles[first:]
        with SyncClient(
            portal, lifecycles, transport=_PortalTransport(portal, transport), base_url=base_url
        ) as client:
            try:
                yield client
            finally:
                client._close_sessions()
        portal.call(runner.wait_idle)
        check_for_leaks(lifecycles, when="when the client exited")


class AsyncClientFactory(Protocol):
    """The type of ``portside_async_client``: ``async with portside_async_client(app) as c``."""

    def __call__(
        self, app: Any, *, base_url: str = ..., raise_app_exceptions: bool = ...
    ) -> AbstractAsyncContextManager[AsyncClient]:
        """Start ``app`` inside the test's transaction; see :func:`open_async_client`."""
        ...


class SyncClientFactory(Protocol):
    """The type of ``portside_sync_client``: ``with portside_sync_client(app) as client``."""

    def __call__(
        self, app: Any, *, base_url: str = ..., raise_app_exceptions: bool = ...
    ) -> AbstractContextManager[SyncClient]:
        """Start ``app`` inside the test's transaction; see :func:`open_sync_client`."""
        ...
