"""A client that disconnects before its response: the request's database work stops.

ASGI servers keep running a request whose client has gone; they only say so when
the app next calls ``receive()`` (``http.disconnect``), which a handler waiting for
a slow statement never does. Its statement would run on, and its unit of work hold
a connection, until the statement ends or the deadline stops it. So
:class:`~portside.asgi.UnitOfWorkMiddleware` reads each request's messages through
an :class:`Inbox`, and a request that runs longer than :data:`WATCH_AFTER` and
holds a connection is watched: a task reads the server's next message ahead of the app
(body messages are kept for the app, never taken from it). An ``http.disconnect``
before the response started then:

1. stops the unit's statements on the database server
   (:meth:`UnitOfWork.interrupt <portside.UnitOfWork.interrupt>`, see
   :mod:`portside.interrupts`);
2. cancels the request's task, so the unit rolls back and its connections go back
   to the pool (the unit's cleanup is bounded by the cleanup timeout, as always);
3. leaves one line in the log (the middleware writes it).

A handler inside an anyio scope shielded from cancellation (a sync handler waiting
for its worker thread, for one) is not cancelled there: its statement was stopped,
so it soon gets the driver's error, and the response it then makes is dropped and
its unit rolled back. A disconnect the app reads itself rolls the unit back the
same way.

Cost: a request shorter than :data:`WATCH_AFTER` starts no task; it is added to and
removed from a set, and one timer per event loop finds the requests that outlive
it. Watching needs asyncio (under trio, sync-only apps, no request is watched: the
deadline is what stops a query). The task is cancelled natively (``Task.cancel``,
then ``uncancel`` by the middleware): an anyio cancel scope around every request
would cost more than everything here.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from portside.unit_of_work import UnitOfWork

    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]

__all__: list[str] = []

logger = logging.getLogger("portside")

#: Seconds a request runs (between one and two of these) before it is watched.
WATCH_AFTER = 0.05
#: Key set in the scope of a request whose client has gone (replies are not logged).
CLIENT_GONE_KEY = "portside.client_gone"
# How often a watcher looks again while the request cannot be cancelled yet.
_POLL = 0.01
_DISCONNECT = {"type": "http.disconnect"}


class Inbox:
    """A request's messages from the server, each read once and handed to the app.

    Keeps the body (up to ``limit`` bytes; references to the messages, no copies)
    so that a retry can read it again after :meth:`rewind`; a larger body cannot be
    replayed, and its request is not retried. A watcher may read ahead of the app
    (:meth:`read_ahead`); a body message it reads waits here for the app, and the
    app's ``receive()`` never reads the server while the watcher does.
    """

    __slots__ = (
        "_ahead",
        "_position",
        "_reading",
        "_receive",
        "_taken",
        "complete",
        "disconnected",
        "limit",
        "messages",
        "replayable",
        "size",
    )

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.messages: list[Message] = []
        self.size = 0
        self.replayable = True
        self._position = 0
        #: The server sent the last body message (``more_body`` false).
        self.complete = False
        #: The server said the client has gone (``http.disconnect``).
        self.disconnected = False
        self._ahead: Message | None = None  # read ahead, not yet handed to the app
        self._reading: asyncio.Event | None = None  # set when the watcher's read ends
        self._taken: asyncio.Event | None = None  # set when the app takes _ahead

    async def receive(self) -> Message:
        """The app's ``receive``: the kept body first, then the server's messages."""
        if self._position < len(self.messages):
            message = self.messages[self._position]
            self._position += 1
            return message
        while self._ahead is None and self._reading is not None:
            await self._reading.wait()  # the watcher's read: its message is for us
        if self._ahead is not None:
            message, self._ahead = self._ahead, None
            if self._taken is not None:
                self._taken.set()
        elif self.disconnected:
            return dict(_DISCONNECT)
        else:
            message = self._note(await self._receive())
        if self.replayable and message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.replayable = False
                self.messages.clear()
            else:
                self.messages.append(message)
                self._position += 1
        return message

    async def read_ahead(self) -> None:
        """Read the server's next message ahead of the app (the watcher's read).

        Reads one body message at a time: the next only once the app has taken it.
        """
        while self._ahead is not None and not self.complete:
            taken = self._taken = asyncio.Event()
            await taken.wait()
        reading = self._reading = asyncio.Event()
        try:
            message = self._note(await self._receive())
        finally:
            self._reading = None
            reading.set()
        if message["type"] == "http.request":
            self._ahead = message

    def _note(self, message: Message) -> Message:
        kind = message["type"]
        if kind == "http.request" and not message.get("more_body", False):
            self.complete = True
        elif kind == "http.disconnect":
            self.disconnected = True
        return message

    def rewind(self) -> None:
        """Hand the kept body to the app again, from its first message (a retry)."""
        self._position = 0


class Watch:
    """One request's watch for its client's disconnect (see the module docstring).

    The middleware tells it which unit runs (:meth:`attempt`), when the app returns
    (:meth:`attempt_over`), when the response starts (:meth:`responding`), and
    :meth:`close` at the end. :attr:`cancelled` says whether it cancelled the task.
    """

    __slots__ = (
        "_ticker",
        "_watcher",
        "cancelled",
        "generation",
        "inbox",
        "responded",
        "running",
        "scope",
        "task",
        "unit",
    )

    def __init__(
        self,
        inbox: Inbox,
        task: asyncio.Task[Any],
        ticker: _Ticker,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.inbox = inbox
        self.task = task
        self._ticker = ticker
        self._watcher: asyncio.Task[None] | None = None
        self.unit: UnitOfWork | None = None
        self.scope: MutableMapping[str, Any] | None = None
        self.running = False
        self.responded = False
        self.cancelled = False
        self.generation = 0
        ticker.add(self, loop)

    def attempt(self, unit: UnitOfWork, scope: MutableMapping[str, Any]) -> None:
        """The app runs (again) with ``unit``, for the request ``scope``."""
        self.unit = unit
        self.scope = scope
        self.running = True

    def attempt_over(self) -> None:
        """The app returned (or raised): nothing to cancel until the next attempt."""
        self.running = False

    def responding(self) -> None:
        """The response starts: from now on the app's own code sees the disconnect."""
        self.responded = True
        self._stop()

    def close(self) -> None:
        """The request has ended."""
        self.responded = True
        self._ticker.discard(self)
        self._stop()

    @property
    def ready(self) -> bool:
        """Whether the request is worth a watcher: its unit holds a connection, no response.

        Not while it waits for a connection: under load, requests queue for the pool
        far longer than :data:`WATCH_AFTER`, and at most a pool's worth of them hold
        one at a time.
        """
        unit = self.unit
        return self.running and not self.responded and unit is not None and unit.holds_connections

    def start(self) -> None:
        """Start watching (the ticker calls this once the request ran long enough)."""
        self._watcher = self.task.get_loop().create_task(self._watch())

    def _stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        try:
            while not self.inbox.disconnected:
                await self.inbox.read_ahead()
            await self._stop_request()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.debug("watching a request for its client's disconnect failed", exc_info=True)

    async def _stop_request(self) -> None:
        """Stop the statements of the request's unit, then cancel the request's task."""
        interrupted: UnitOfWork | None = None
        while not self.responded:
            unit = self.unit
            if self.scope is not None:
                self.scope[CLIENT_GONE_KEY] = True
            if unit is not None and self.running and not unit.ended:
                if unit is not interrupted:
                    interrupted = unit
                    await unit.interrupt()
                    continue  # the request went on meanwhile: look again
                if not _shielded(self.task):
                    self.cancelled = True
                    self.task.cancel()
                    return
            await asyncio.sleep(_POLL)


def _shielded(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is inside an anyio cancel scope shielded from cancellation now.

    A native cancellation would go through the shield (anyio only shields from its
    own), so the watcher waits until the task has left it.
    """
    from anyio._backends._asyncio import _task_states  # noqa: PLC0415 - asyncio only

    state = _task_states.get(task)
    scope = None if state is None else state.cancel_scope
    while scope is not None:
        if scope.shield:
            return True
        scope = scope._parent_scope
    return False


class _Ticker:
    """One timer per event loop: starts the watch of requests that outlived a tick.

    It keeps no reference to its loop (the loop keys it, weakly).
    """

    __slots__ = ("_generation", "_scheduled", "_waiting")

    def __init__(self) -> None:
        self._waiting: set[Watch] = set()
        self._generation = 0
        self._scheduled = False

    def add(self, watch: Watch, loop: asyncio.AbstractEventLoop) -> None:
        watch.generation = self._generation
        self._waiting.add(watch)
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(WATCH_AFTER, self._tick, loop)

    def discard(self, watch: Watch) -> None:
        self._waiting.discard(watch)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._generation += 1
        # Added before the previous tick: running for WATCH_AFTER at least.
        due = [
            watch
            for watch in self._waiting
            if self._generation - watch.generation >= 2 and watch.ready
        ]
        for watch in due:
            self._waiting.discard(watch)
            watch.start()
        self._scheduled = bool(self._waiting)
        if self._scheduled:
            loop.call_later(WATCH_AFTER, self._tick, loop)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = (
    weakref.WeakKeyDictionary()
)


def watch_request(inbox: Inbox) -> Watch | None:
    """A watch for the request running in the current task; ``None`` off asyncio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None  # trio
    task = asyncio.current_task(loop)
    if task is None:
        return None
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker()
    return Watch(inbox, task, ticker, loop)
