"""In-process ASGI driving: run an app's lifespan, then call it like a server would.

No server and no HTTP client: :func:`run_lifespan` speaks the ASGI lifespan
protocol and :class:`AsgiClient` builds each request's scope from a prepared
template and calls ``app(scope, receive, send)`` directly, so the driver's own cost
per request is a few microseconds (``python -m benchmarks`` measures and prints it).
Like uvicorn, every request gets a shallow copy of the lifespan state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.4"}
_CLIENT = ("127.0.0.1", 50000)
_SERVER = ("bench", 80)
_DISCONNECT: Message = {"type": "http.disconnect"}


class LifespanError(RuntimeError):
    """The app's lifespan reported a failed startup or shutdown."""


@asynccontextmanager
async def run_lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Start ``app`` through its lifespan, yield its lifespan state, then shut it down."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": _ASGI, "state": state}
    inbox.put_nowait({"type": "lifespan.startup"})

    async def lifespan() -> None:
        await app(scope, inbox.get, outbox.put)

    task = asyncio.create_task(lifespan())

    async def reply(expected: str) -> None:
        getter = asyncio.ensure_future(outbox.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            task.result()  # raises the app's own error
            raise LifespanError(f"the app's lifespan ended without {expected}")
        message = getter.result()
        if message["type"] != expected:
            raise LifespanError(f"{message['type']}: {message.get('message', '')}")

    await reply("lifespan.startup.complete")
    try:
        yield state
    finally:
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await reply("lifespan.shutdown.complete")
        await task


@dataclass(frozen=True, slots=True)
class Call:
    """One prepared request: the route it exercises and what to send."""

    route: str
    method: str
    path: str
    query: bytes = b""
    body: bytes = b""
    #: The id a ``GET /items/{id}`` asks for (0 otherwise), for the raw contestant.
    item_id: int = 0
    scope: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls,
        route: str,
        method: str,
        path: str,
        *,
        query: bytes = b"",
        body: bytes = b"",
        item_id: int = 0,
    ) -> Call:
        """A call with its scope template (everything but the per-request state)."""
        headers = [(b"host", b"bench"), (b"accept", b"application/json")]
        if body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": _CLIENT,
            "server": _SERVER,
        }
        return cls(route, method, path, query, body, item_id, scope)


def as_asgi(app: object) -> ASGIApp:
    """``app`` typed as the plain-mapping ASGI app (Litestar types its own TypedDicts)."""
    return cast("ASGIApp", app)


class AsgiClient:
    """Calls a started app in process; returns ``(status, body)`` per request."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def call(self, call: Call) -> tuple[int, bytes]:
        """Send ``call`` through the app and collect the complete response."""
        scope = dict(call.scope)
        scope["state"] = self.state.copy()
        status = 0
        chunks: list[bytes] = []
        body_sent = False
        complete = False
        waiter: asyncio.Future[None] | None = None

        async def receive() -> Message:
            nonlocal body_sent, waiter
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": call.body, "more_body": False}
            # Asked again (an app watching for disconnects): park until the response is out.
            if not complete:
                waiter = asyncio.get_running_loop().create_future()
                await waiter
            return _DISCONNECT

        async def send(message: Message) -> None:
            nonlocal status, complete
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    complete = True
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The smallest complete ASGI app, to measure the driver's own cost."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})
