"""The in-process ASGI driver itself, against tiny raw ASGI apps."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from portside_testing.asgi import AppRunner, LifespanError, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


class RawApp:
    """A raw ASGI app recording what it saw; ``/slow`` sleeps, ``/boom`` raises."""

    def __init__(self, *, fail_startup: str | None = None) -> None:
        self.fail_startup = fail_startup
        self.events: list[str] = []
        self.states: list[dict[str, Any]] = []
        self.received: list[Message] = []
        self.finished: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return
        self.states.append(scope["state"])
        self.received.append(await receive())
        path = scope["path"]
        try:
            if path == "/slow":
                await anyio.sleep(1)
            elif path == "/listen":
                self.received.append(await receive())
                self.finished.append("listened")
                return
            elif path == "/boom":
                raise ValueError("boom")
            elif path == "/boom-after":
                await self.answer(send, 200, b"ok")
                raise ValueError("late boom")
            scope["state"]["mutated"] = True
            await self.answer(send, 201, repr(scope["state"].get("counter")).encode())
            self.events.append("sent")
        finally:
            self.finished.append(path)

    async def answer(self, send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        self.events.append("started")
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        if self.fail_startup == "raise":
            await send({"type": "lifespan.startup.failed", "message": "no"})
            raise KeyError("startup broke")
        if self.fail_startup == "message":
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        scope["state"]["counter"] = 1
        self.events.append("startup")
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        self.events.append("shutdown")
        await send({"type": "lifespan.shutdown.complete"})


async def test_lifespan_state_is_copied_into_each_request() -> None:
    app = RawApp()
    async with AppRunner(app) as runner:
        assert runner.state == {"counter": 1}
        first = await runner.request("GET", "/a")
        second = await runner.request("POST", "/b?x=1", json={"a": 1})
        assert (first.status, first.body) == (201, b"1")
        assert second.status == 201
        assert app.received[1] == {"type": "http.request", "body": b'{"a": 1}', "more_body": False}
        assert app.states[0] is not app.states[1]
        assert "mutated" not in runner.state
    assert app.events[0] == "startup"
    assert app.events[-1] == "shutdown"


async def test_startup_failure_raises_the_apps_exception() -> None:
    with pytest.raises(KeyError, match="startup broke"):
        async with AppRunner(RawApp(fail_startup="raise")):
            pass
    with pytest.raises(LifespanError, match="no database"):
        async with AppRunner(RawApp(fail_startup="message")):
            pass


async def test_app_exceptions_are_collected_like_a_server_logs_them() -> None:
    async with AppRunner(RawApp()) as runner:
        before = await runner.request("GET", "/boom")
        after = await runner.request("GET", "/boom-after")
    assert before.status == 500
    assert isinstance(before.error, ValueError)
    assert (after.status, after.body) == (200, b"ok")
    assert [str(e) for e in runner.errors] == ["boom", "late boom"]


async def test_hook_runs_before_the_response_start_is_delivered() -> None:
    app = RawApp()
    seen: list[tuple[int, list[str]]] = []

    async def hook(message: Message) -> None:
        seen.append((message["status"], list(app.events)))

    async with AppRunner(app) as runner:
        await runner.request("GET", "/", on_response_start=hook)
    assert seen == [(201, ["startup"])]


async def test_concurrent_requests_and_cancellation() -> None:
    app = RawApp()
    async with AppRunner(app) as runner:
        with anyio.fail_after(0.9):  # 20 one-second requests, run concurrently
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(runner.request, "GET", "/slow")
                await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
        assert app.finished == ["/slow"] * 20  # each app call saw the cancellation
        assert (await runner.request("GET", "/")).status == 201


async def test_disconnect_stops_waiting_and_the_app_sees_it() -> None:
    app = RawApp()
    async with AppRunner(app) as runner:
        with anyio.fail_after(0.5):
            await runner.disconnect("GET", "/listen", after=0.05)
            await runner.disconnect("GET", "/slow", after=0.05)
        assert app.received[1] == {"type": "http.disconnect"}
        assert "/slow" not in app.finished  # still running in the background
        await runner.wait_idle()
        assert "/slow" in app.finished
    assert app.events[-1] == "shutdown"


async def test_receive_after_a_complete_response_reports_disconnect() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan support
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        assert await receive() == {"type": "http.disconnect"}

    async with AppRunner(app) as runner:
        response = await runner.request("GET", "/")
    assert (response.status, response.error) == (204, None)
