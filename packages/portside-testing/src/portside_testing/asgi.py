"""A small in-process ASGI driver: lifespan, requests, cancellation, disconnects.

:class:`AppRunner` talks to an ASGI app the way a server such as uvicorn does, with
no network, no server and no HTTP client in between::

    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/items", json={"name": "a"})
        assert response.status == 201

It runs the lifespan protocol (startup on enter, shutdown on exit), keeps the
lifespan ``state`` and hands each request a shallow copy of it, as servers do.
Requests may run concurrently and may be cancelled by the caller (the app is
cancelled with them). :meth:`AppRunner.disconnect` plays a client that hangs up.
``on_response_start`` runs the moment the app sends ``http.response.start``, before
the app's ``send()`` returns: the place to check what the database holds at the
instant the client would learn the outcome.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "ASGIApp",
    "AppRunner",
    "LifespanError",
    "Message",
    "Receive",
    "Response",
    "ResponseStartHook",
    "Scope",
    "Send",
    "WebSocketRefusedError",
    "WebSocketSession",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Called with the ``http.response.start`` message as the app sends it.
ResponseStartHook = Callable[[Message], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.4"}
# How long to wait, after a lifespan "failed" message, for the app's exception.
_RAISE_GRACE = 5.0


class LifespanError(RuntimeError):
    """The app reported a failed lifespan startup or shutdown without raising.

    When the app *raises*, :class:`AppRunner` re-raises that exception instead, so
    its type (e.g. ``portside.StartupError``) stays available.
    """


@dataclass(slots=True)
class Response:
    """What the client received."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: The exception the app raised while answering, if any (a server would log it;
    #: when it raised before starting a response, ``status`` is the server's 500).
    error: Exception | None = None

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), decoded."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()

    def json(self) -> Any:
        """The body parsed as JSON."""
        return jsonlib.loads(self.body)


@dataclass(slots=True)
class _Exchange:
    """One request/response cycle, from the server's side."""

    body: bytes
    on_response_start: ResponseStartHook | None
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    disconnected: bool = False
    #: Set once the response completed or the client hung up: the request is over.
    over: anyio.Event = field(default_factory=anyio.Event)
    _body_sent: bool = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        # Like uvicorn: later calls wait until the response is done or the client left.
        await self.over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.disconnected:
            return  # nobody listens any more; servers drop the message
        kind = message["type"]
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("The app sent http.response.start twice.")
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            if self.on_response_start is not None:
                await self.on_response_start(message)
        elif kind == "http.response.body":
            if self.status is None or self.complete:
                raise RuntimeError("The app sent a body outside a started response.")
            self.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.complete = True
                self.over.set()
        else:
            raise RuntimeError(f"Unexpected ASGI message from the app: {kind!r}.")

    def hang_up(self) -> None:
        self.disconnected = True
        self.over.set()

    def response(self, error: Exception | None) -> Response:
        if self.status is None:
            # What a server answers when the app gave it nothing to send.
            return Response(500, [], b"Internal Server Error", error)
        if not self.complete and error is None:
            error = RuntimeError("The app returned without completing its response.")
        return Response(self.status, self.headers, b"".join(self.chunks), error)


class AppRunner:
    """Run an ASGI app in-process: its lifespan, and requests against it.

    Single use: ``async with AppRunner(app) as runner:`` starts the app and stops
    it on exit. If startup fails, entering raises the app's own exception when it
    raised one, else :class:`LifespanError`.

    Exceptions the app raises while answering are collected in :attr:`errors`
    (and on the :class:`Response`), as a server would log them, not raised.
    """

    def __init__(self, app: ASGIApp, *, shutdown_timeout: float = 60.0) -> None:
        self.app = app
        #: The lifespan state the app filled at startup; requests get a copy.
        self.state: dict[str, Any] = {}
        #: Exceptions the app raised while handling requests, in order.
        self.errors: list[Exception] = []
        self._shutdown_timeout = shutdown_timeout
        self._task_group: TaskGroup | None = None
        self._used = False
        self._lifespan_supported = True
        self._lifespan_started = False
        self._lifespan_message: Message | None = None
        self._lifespan_error: Exception | None = None
        self._lifespan_answered = anyio.Event()
        self._lifespan_finished = anyio.Event()
        self._shutdown_requested = anyio.Event()
        self._background = 0
        self._idle = anyio.Event()
        self._idle.set()

    # -- lifespan ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._used:
            raise RuntimeError("An AppRunner is single-use; make a new one to start again.")
        self._used = True
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            task_group.start_soon(self._run_lifespan)
            await self._lifespan_answered.wait()
            await self._check_lifespan("startup")
        except BaseException:
            # Children never raise (they store errors), so this exits cleanly.
            self._task_group = None
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            raise
        self._lifespan_started = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        assert task_group is not None
        failure: Exception | None = None
        try:
            # Like a server's graceful shutdown: let running requests end, then stop.
            with anyio.fail_after(self._shutdown_timeout, shield=True):
                await self._idle.wait()
                await self._shutdown()
        except Exception as shutdown_exc:
            failure = shutdown_exc
        # Everything has ended (or timed out); the body's own exception, if any,
        # propagates as it is instead of wrapped in the task group's exception group.
        task_group.cancel_scope.cancel()
        await task_group.__aexit__(None, None, None)
        if failure is not None:
            if exc is None:
                raise failure
            exc.add_note(f"Stopping the app failed as well: {failure!r}")

    async def _shutdown(self) -> None:
        if not self._lifespan_supported or self._lifespan_finished.is_set():
            return
        self._lifespan_answered = anyio.Event()
        self._shutdown_requested.set()
        await self._lifespan_answered.wait()
        await self._check_lifespan("shutdown")

    async def _run_lifespan(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        try:
            await self.app(scope, self._lifespan_receive, self._lifespan_send)
        except Exception as exc:
            self._lifespan_error = exc
        finally:
            if self._lifespan_message is None and self._lifespan_error is None:
                # The app returned without a word: it does not do lifespan.
                self._lifespan_supported = False
            self._lifespan_finished.set()
            self._lifespan_answered.set()

    async def _lifespan_receive(self) -> Message:
        if not self._shutdown_requested.is_set() and self._lifespan_message is None:
            return {"type": "lifespan.startup"}
        await self._shutdown_requested.wait()
        return {"type": "lifespan.shutdown"}

    async def _lifespan_send(self, message: Message) -> None:
        self._lifespan_message = message
        self._lifespan_answered.set()

    async def _check_lifespan(self, phase: str) -> None:
        message = self._lifespan_message or {}
        if message.get("type") == f"lifespan.{phase}.complete":
            return
        if message.get("type") == f"lifespan.{phase}.failed" or self._lifespan_error:
            # An app that reports failure usually raises right after: prefer that.
            with anyio.move_on_after(_RAISE_GRACE):
                await self._lifespan_finished.wait()
            if self._lifespan_error is not None:
                raise self._lifespan_error
            raise LifespanError(f"Lifespan {phase} failed: {message.get('message', '')}")
        if self._lifespan_supported and self._lifespan_finished.is_set():
            raise LifespanError(f"The app's lifespan ended during {phase} without answering.")

    # -- requests ------------------------------------------------------------------

    def _scope(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Scope:
        if self._task_group is None:
            raise RuntimeError("The app is not running: use `async with AppRunner(app):`.")
        raw_path, _, query = path.partition("?")
        return {
            "type": "http",
            "asgi": dict(_ASGI),
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": dict(self.state),  # shallow copy per request, as uvicorn does
        }

    @staticmethod
    def _encode(
        json: Any, headers: Mapping[str, str] | None
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        body = b"" if json is None else jsonlib.dumps(json).encode()
        raw = [(b"host", b"testserver")]
        if json is not None:
            raw.append((b"content-type", b"application/json"))
        raw.append((b"content-length", str(len(body)).encode()))
        raw += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        return body, raw

    async def _call(self, scope: Scope, exchange: _Exchange) -> Response:
        error: Exception | None = None
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            error = exc
            self.errors.append(exc)
        finally:
            exchange.over.set()  # release any receive() still waiting
        return exchange.response(error)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        on_response_start: ResponseStartHook | None = None,
    ) -> Response:
        """Send one request and wait for the app to finish handling it.

        Runs the app in the calling task: cancelling the caller cancels the app.
        ``json`` (if not ``None``) is sent as the body. ``on_response_start`` is
        awaited when the app sends ``http.response.start``.
        """
        body, raw_headers = self._encode(json, headers)
        scope = self._scope(method, path, raw_headers)
        return await self._call(scope, _Exchange(body, on_response_start))

    async def disconnect(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        after: float = 0.0,
    ) -> None:
        """Send a request whose client hangs up ``after`` seconds later.

        Returns once the client is gone (or the response completed first). The app
        keeps running in the background, as under a real server: from then on its
        ``receive()`` returns ``http.disconnect`` and what it sends is dropped.
        :meth:`wait_idle` waits for such requests to end; leaving the runner does too.
        """
        body, raw_headers = self._encode(json, headers)
        scope = self._scope(method, path, raw_headers)
        exchange = _Exchange(body, None)
        assert self._task_group is not None
        self._background += 1
        self._idle = anyio.Event()
        self._task_group.start_soon(self._call_in_background, scope, exchange)
        with anyio.move_on_after(after):
            await exchange.over.wait()
        exchange.hang_up()

    async def _call_in_background(self, scope: Scope, exchange: _Exchange) -> None:
        try:
            await self._call(scope, exchange)
        finally:
            self._background -= 1
            if self._background == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until every request started by :meth:`disconnect` has ended."""
        await self._idle.wait()

    # -- websockets ------------------------------------------------------------------

    @asynccontextmanager
    async def websocket(self, path: str) -> AsyncIterator[WebSocketSession]:
        """Open a websocket to ``path``; the app runs in a task until the block ends.

        The block's end closes the socket from the client's side (code 1000) and
        waits for the app to return. An exception the app raised is in
        :attr:`errors` and on :attr:`WebSocketSession.error`.
        """
        scope = self._scope("GET", path, [(b"host", b"testserver")])
        scope.update(type="websocket", scheme="ws", subprotocols=[])
        del scope["method"]
        to_app, app_inbox = anyio.create_memory_object_stream[Message](16)
        app_outbox, from_app = anyio.create_memory_object_stream[Message](16)
        session = WebSocketSession(to_app, from_app)

        async def run() -> None:
            try:
                await self.app(scope, app_inbox.receive, app_outbox.send)
            except Exception as exc:
                session.error = exc
                self.errors.append(exc)
            finally:
                await app_outbox.send({"type": "websocket.close", "code": 1011})
                session.finished.set()

        await to_app.send({"type": "websocket.connect"})
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(run)
                try:
                    accepted = await from_app.receive()
                    if accepted["type"] != "websocket.accept":
                        raise WebSocketRefusedError(
                            f"The app did not accept the websocket: {accepted}", session.error
                        )
                    yield session
                finally:
                    with anyio.CancelScope(shield=True), anyio.fail_after(10):
                        if not session.finished.is_set():
                            await to_app.send({"type": "websocket.disconnect", "code": 1000})
                        await session.finished.wait()
        except BaseExceptionGroup as group:  # one task raised: show it, not the group
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            for stream in (to_app, app_inbox, app_outbox, from_app):
                stream.close()


class WebSocketRefusedError(RuntimeError):
    """The app closed a websocket instead of accepting it; ``error`` is what it raised."""

    def __init__(self, message: str, error: Exception | None) -> None:
        super().__init__(message)
        self.error = error


class WebSocketSession:
    """The client's side of one websocket opened by :meth:`AppRunner.websocket`."""

    def __init__(
        self,
        to_app: MemoryObjectSendStream[Message],
        from_app: MemoryObjectReceiveStream[Message],
    ) -> None:
        self._to_app = to_app
        self._from_app = from_app
        #: Set when the app's websocket handler has returned.
        self.finished = anyio.Event()
        #: The exception the app raised, if any.
        self.error: Exception | None = None

    async def send_json(self, data: Any) -> None:
        """Send ``data`` as a JSON text message."""
        await self._to_app.send({"type": "websocket.receive", "text": jsonlib.dumps(data)})

    async def receive_json(self) -> Any:
        """The next message the app sent, parsed as JSON; raises if the app closed."""
        message = await self._from_app.receive()
        if message["type"] != "websocket.send":
            raise RuntimeError(f"The app closed the websocket: {message}")
        return jsonlib.loads(message.get("text") or message.get("bytes") or b"null")
