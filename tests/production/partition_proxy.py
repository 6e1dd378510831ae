"""A loopback TCP proxy that can freeze: a network partition on demand.

``PartitionProxy(upstream_port)`` listens on ``127.0.0.1:<free port>`` and forwards
every connection to ``127.0.0.1:upstream_port``. :meth:`PartitionProxy.freeze` stops
forwarding in both directions while keeping every socket open: the kernel still
accepts (and acknowledges) what the client sends, nothing reaches the server and
nothing comes back, as when packets are dropped somewhere on the way. New
connections are still accepted while frozen, and never forwarded. :meth:`thaw`
resumes forwarding. :meth:`sever_on_use` drops the connections forwarded so far
the way a NAT or load balancer that forgot an idle flow does: the server's side
is closed, the client's is told nothing until it sends, and is then reset. One
thread does all the work, so the proxy keeps running whatever the event loop
under test does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType
from typing import Self

_TICK = 0.02
_CHUNK = 65536


class _Pair:
    """One client connection and its connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.server if sock is self.client else self.client

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.close()


class PartitionProxy:
    """Forward ``127.0.0.1:port`` to ``upstream_host:upstream_port`` until frozen."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._pairs: dict[socket.socket, _Pair] = {}
        self._frozen = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.accepted = 0
        self._sever = threading.Event()
        self._severed = threading.Event()
        self._doomed: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._run, name="partition-proxy", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def frozen(self) -> bool:
        return self._frozen.is_set()

    @property
    def open_connections(self) -> int:
        """Client connections the proxy holds open (forwarded or not)."""
        with self._lock:
            return len({id(pair) for pair in self._pairs.values()})

    def url(self, url: str) -> str:
        """``url`` (a SQLAlchemy URL to the upstream server) pointed at the proxy."""
        from sqlalchemy.engine import make_url

        return (
            make_url(url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def freeze(self) -> None:
        """Stop forwarding, both ways; every socket stays open."""
        self._frozen.set()

    def thaw(self) -> None:
        """Forward again (what was sent meanwhile is delivered late)."""
        self._frozen.clear()

    def sever_on_use(self) -> None:
        """Close the server side of every connection; reset each client's when it next sends.

        The client sees nothing until then: no data, no FIN, as after a NAT or load
        balancer dropped an idle flow. New connections are forwarded as usual.
        """
        self._severed.clear()
        self._sever.set()
        if not self._severed.wait(timeout=5):
            raise RuntimeError("the proxy thread did not sever its connections")

    def stop(self) -> None:
        """Close every connection and the listener."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for pair in set(self._pairs.values()):
                pair.close()
            self._pairs.clear()
        self._listener.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if self._sever.is_set():
                    self._sever_all(selector)
                for key, _ in selector.select(timeout=_TICK):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept(selector)
                    elif not self._frozen.is_set():
                        self._forward(selector, sock)
                if self._frozen.is_set():
                    # Not reading: whatever arrives waits in the kernel's buffers.
                    self._stopping.wait(_TICK)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        server = socket.create_connection(self._upstream)
        for sock in (client, server):
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        with self._lock:
            self._pairs[client] = self._pairs[server] = pair
            self.accepted += 1
        selector.register(client, selectors.EVENT_READ)
        selector.register(server, selectors.EVENT_READ)

    def _sever_all(self, selector: selectors.BaseSelector) -> None:
        with self._lock:
            pairs = {id(pair): pair for pair in self._pairs.values()}.values()
            for pair in pairs:
                if pair.client in self._doomed:
                    continue
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(pair.server)
                with contextlib.suppress(OSError):
                    pair.server.close()
                self._pairs.pop(pair.server, None)
                self._doomed.add(pair.client)
        self._sever.clear()
        self._severed.set()

    def _reset(self, selector: selectors.BaseSelector, client: socket.socket) -> None:
        """Answer what a doomed client sent with a reset (RST), forwarding nothing."""
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(client)
        with self._lock:
            self._doomed.discard(client)
            self._pairs.pop(client, None)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()

    def _forward(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        if sock in self._doomed:
            self._reset(selector, sock)
            return
        with self._lock:
            pair = self._pairs.get(sock)
        if pair is None:
            return
        try:
            data = sock.recv(_CHUNK)
            if data:
                pair.peer(sock).sendall(data)
                return
        except OSError:
            pass
        # One side closed (or failed): close both, as a real network path would.
        for side in (pair.client, pair.server):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(side)
        with self._lock:
            self._pairs.pop(pair.client, None)
            self._pairs.pop(pair.server, None)
        pair.close()
