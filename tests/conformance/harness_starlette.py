"""The conformance harness for portside-starlette, written as a Starlette app would be.

Async endpoints ask for ``await portside_starlette.async_session(request)``. In sync
mode, endpoints that read a JSON body stay ``async def`` (a ``def`` endpoint cannot
await the body), take ``await portside_starlette.session(request)`` and hand it to
blocking code with ``run_in_threadpool``; body-less ones are ``def`` endpoints, which
Starlette runs in a worker thread, and use ``portside_starlette.session_from_thread``.
No endpoint commits: ``UnitOfWorkMiddleware`` commits before the response starts, or
rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import anyio
from sqlalchemy import func, insert, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import portside
import portside_starlette
from portside import AsyncSession, DatabaseSettings, Lifecycle, Session
from portside_starlette import get_lifecycle, install, transaction
from portside_testing.conformance import ConformanceSuite, ReplicaConformanceSuite
from portside_testing.conformance.harness import (
    LOCK_WINDOW,
    RACE_WINDOW,
    RETRY_POLICY,
    SLOW_QUERY_DEADLINE,
    Mode,
    runaway_statement,
)
from portside_testing.conformance.models import Child, Counter, Item, add_one

MISSING_PARENT = 999_999
#: Whether the server that answers is a standby (the replica scenarios' probe).
IN_RECOVERY = func.pg_is_in_recovery()


def as_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "name": item.name}


async def untouched(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def sync_session_on_the_loop(request: Request) -> JSONResponse:
    session = await portside_starlette.session(request)
    return JSONResponse({"count": len(session.exec(select(Item)).all())})  # must raise


async def websocket_request_session(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        await portside_starlette.async_session(websocket)
    except Exception as exc:
        await websocket.send_json({"error": type(exc).__name__})
    else:
        await websocket.send_json({"error": "none"})


def store_item_blocking(lifecycle: Lifecycle, name: str) -> int:
    with lifecycle.session() as session:
        item = Item(name=name)
        session.add(item)
        session.flush()
        return item.id or 0


async def websocket_items(websocket: WebSocket) -> None:
    await websocket.accept()
    lifecycle = get_lifecycle(websocket)
    sync = websocket.app.state.mode == "sync"
    try:
        while True:
            name = (await websocket.receive_json())["name"]
            if sync:
                item_id = await anyio.to_thread.run_sync(store_item_blocking, lifecycle, name)
            else:
                async with lifecycle.async_session() as session:
                    item = Item(name=name)
                    session.add(item)
                    await session.flush()
                    item_id = item.id or 0
            await websocket.send_json({"id": item_id})
    except WebSocketDisconnect:
        return


common: list[BaseRoute] = [
    Route("/untouched", untouched),
    Route("/sync-on-loop", sync_session_on_the_loop),
    WebSocketRoute("/ws/items", websocket_items),
    WebSocketRoute("/ws/request-session", websocket_request_session),
]


def background_results(request: Request) -> list[str]:
    """Where background tasks report what using the request's session raised."""
    results: list[str] = request.app.state.background_results
    return results


# -- async endpoints -----------------------------------------------------------------


async def add_item(request: Request) -> Item:
    """Add an Item named by the JSON body, flushed (so it has an id)."""
    session = await portside_starlette.async_session(request)
    item = Item(name=(await request.json())["name"])
    session.add(item)
    await session.flush()
    return item


async def create_item(request: Request) -> JSONResponse:
    return JSONResponse(as_json(await add_item(request)), status_code=201)


async def read_item(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    item = await session.get(Item, request.path_params["item_id"])
    if item is None:
        raise HTTPException(404, f"no item {request.path_params['item_id']}")
    return JSONResponse(as_json(item))


async def list_items(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    names = await session.exec(select(Item.name).order_by(col(Item.name)))
    return JSONResponse({"names": list(names)})


async def create_then_raise(request: Request) -> JSONResponse:
    await add_item(request)
    raise RuntimeError("the handler failed after writing")


async def create_then_conflict(request: Request) -> JSONResponse:
    await add_item(request)
    raise HTTPException(409, "conflict")


async def create_then_return_422(request: Request) -> JSONResponse:
    await add_item(request)
    return JSONResponse({"detail": "rejected"}, status_code=422)


async def create_then_redirect(request: Request) -> RedirectResponse:
    await add_item(request)
    return RedirectResponse("/items", status_code=303)


async def create_orphan(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    session.add(Child(parent_id=MISSING_PARENT))
    await session.flush()  # accepted: the foreign key is only checked at COMMIT
    return JSONResponse(await request.json(), status_code=201)


async def create_then_swallow_a_failure(request: Request) -> JSONResponse:
    data = await request.json()
    session = await portside_starlette.async_session(request)
    session.add(Item(name=f"{data['name']}-kept"))
    await session.flush()
    with suppress(IntegrityError):  # swallowed: PostgreSQL aborts the transaction
        await session.exec(insert(Item).values(name=data["name"]))  # a duplicate: fails
    return JSONResponse(data, status_code=201)


async def create_slowly(request: Request) -> JSONResponse:
    item = await add_item(request)
    await anyio.sleep((await request.json())["seconds"])
    return JSONResponse(as_json(item), status_code=201)


async def same_session(request: Request) -> JSONResponse:
    first = await portside_starlette.async_session(request)
    second = await portside_starlette.async_session(request)
    return JSONResponse({"same": first is second})


async def use_ended_session(session: AsyncSession, results: list[str]) -> None:
    try:
        await session.exec(select(Item))
    except Exception as exc:
        results.append(type(exc).__name__)
    else:
        results.append("none")


async def create_then_background(request: Request) -> JSONResponse:
    item = await add_item(request)
    session = await portside_starlette.async_session(request)
    task = BackgroundTask(use_ended_session, session, background_results(request))
    return JSONResponse(as_json(item), status_code=201, background=task)


async def count_analytics(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request, "analytics")
    count = (await session.exec(select(func.count()).select_from(Item))).one()
    return JSONResponse({"count": count})


def register_callbacks(request: Request, session: Session | AsyncSession, name: str) -> None:
    events: list[str] = request.app.state.hook_events
    portside.on_commit(session, lambda: events.append(f"commit:{name}"))
    portside.on_rollback(session, lambda: events.append(f"rollback:{name}"))


async def create_hooked(request: Request) -> JSONResponse:
    data = await request.json()
    item = await add_item(request)
    register_callbacks(request, await portside_starlette.async_session(request), data["name"])
    return JSONResponse(as_json(item), status_code=data["status"])


async def bump(request: Request) -> JSONResponse:
    by = (await request.json())["by"]
    session = await portside_starlette.async_session(request)
    counter = await session.get(Counter, 1)
    assert counter is not None
    await anyio.sleep(RACE_WINDOW)  # others read the same value meanwhile
    counter.value += by
    await session.flush()
    return JSONResponse({"value": counter.value})


async def slow_query(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    dialect = (await session.connection()).dialect.name
    await session.exec(text(runaway_statement(dialect)))
    return JSONResponse({"ok": True})


async def create_then_runaway(request: Request) -> JSONResponse:
    item = await add_item(request)
    session = await portside_starlette.async_session(request)
    dialect = (await session.connection()).dialect.name
    await session.exec(text(runaway_statement(dialect)))
    return JSONResponse(as_json(item), status_code=201)


async def transfer(request: Request) -> JSONResponse:
    data = await request.json()
    session = await portside_starlette.async_session(request)
    await session.exec(add_one(data["first"]))
    await anyio.sleep(LOCK_WINDOW)  # the other request locks its first row meanwhile
    await session.exec(add_one(data["second"]))
    return JSONResponse({"ok": True})


serializable = transaction(retries=RETRY_POLICY, isolation_level="SERIALIZABLE")
serializable_once = transaction(isolation_level="SERIALIZABLE")
with_deadline = transaction(deadline=SLOW_QUERY_DEADLINE)

async_routes: list[BaseRoute] = [
    Route("/items", create_item, methods=["POST"]),
    Route("/items", list_items),
    Route("/items/{item_id:int}", read_item),
    Route("/items/raise", create_then_raise, methods=["POST"]),
    Route("/items/http-error", create_then_conflict, methods=["POST"]),
    Route("/items/return-error", create_then_return_422, methods=["POST"]),
    Route("/items/redirect", create_then_redirect, methods=["POST"]),
    Route("/items/deferred", create_orphan, methods=["POST"]),
    Route("/items/swallowed", create_then_swallow_a_failure, methods=["POST"]),
    Route("/items/slow", create_slowly, methods=["POST"]),
    Route("/items/background", create_then_background, methods=["POST"]),
    Route("/same-session", same_session),
    Route("/items/hooked", create_hooked, methods=["POST"]),
    Route("/counter/increment", serializable(bump), methods=["POST"]),
    Route("/counter/increment-once", serializable_once(bump), methods=["POST"]),
    Route("/slow-query", with_deadline(slow_query)),
    Route("/items/runaway", create_then_runaway, methods=["POST"]),
    Route("/counter/transfer", transaction(retries=RETRY_POLICY)(transfer), methods=["POST"]),
    Route("/counter/transfer-once", transfer, methods=["POST"]),
]


async def replica_where(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    return JSONResponse({"replica": (await session.exec(select(IN_RECOVERY))).one()})


async def replica_primary(request: Request) -> JSONResponse:
    portside_starlette.use_primary(request)
    return await replica_where(request)


async def replica_write(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    session.add(Item(name="written-on-a-get"))
    await session.flush()
    return JSONResponse({})


async_routes += [
    Route("/replica/where", replica_where),
    Route("/replica/primary", replica_primary),
    Route("/replica/write", replica_write),
]
async_analytics: list[BaseRoute] = [Route("/analytics/count", count_analytics)]


# -- sync endpoints: blocking work in worker threads -----------------------------------


def add_item_sync(session: Session, name: str) -> Item:
    item = Item(name=name)
    session.add(item)
    session.flush()
    return item


async def add_item_in_thread(request: Request) -> Item:
    """Read the body on the loop; add the Item in a worker thread."""
    name = (await request.json())["name"]
    return await run_in_threadpool(add_item_sync, await portside_starlette.session(request), name)


async def create_item_sync(request: Request) -> JSONResponse:
    return JSONResponse(as_json(await add_item_in_thread(request)), status_code=201)


def read_item_sync(request: Request) -> JSONResponse:
    session = portside_starlette.session_from_thread(request)
    item = session.get(Item, request.path_params["item_id"])
    if item is None:
        raise HTTPException(404, f"no item {request.path_params['item_id']}")
    return JSONResponse(as_json(item))


def list_items_sync(request: Request) -> JSONResponse:
    session = portside_starlette.session_from_thread(request)
    return JSONResponse({"names": list(session.exec(select(Item.name).order_by(col(Item.name))))})


async def create_then_raise_sync(request: Request) -> JSONResponse:
    await add_item_in_thread(request)
    raise RuntimeError("the handler failed after writing")


async def create_then_conflict_sync(request: Request) -> JSONResponse:
    await add_item_in_thread(request)
    raise HTTPException(409, "conflict")


async def create_then_return_422_sync(request: Request) -> JSONResponse:
    await add_item_in_thread(request)
    return JSONResponse({"detail": "rejected"}, status_code=422)


async def create_then_redirect_sync(request: Request) -> RedirectResponse:
    await add_item_in_thread(request)
    return RedirectResponse("/items", status_code=303)


def add_orphan(session: Session) -> None:
    session.add(Child(parent_id=MISSING_PARENT))
    session.flush()  # accepted: the foreign key is only checked at COMMIT


async def create_orphan_sync(request: Request) -> JSONResponse:
    await run_in_threadpool(add_orphan, await portside_starlette.session(request))
    return JSONResponse(await request.json(), status_code=201)


def swallow_a_failure(session: Session, name: str) -> None:
    add_item_sync(session, f"{name}-kept")
    with suppress(IntegrityError):  # swallowed: PostgreSQL aborts the transaction
        session.exec(insert(Item).values(name=name))  # a duplicate: fails


async def create_then_swallow_a_failure_sync(request: Request) -> JSONResponse:
    data = await request.json()
    await run_in_threadpool(
        swallow_a_failure, await portside_starlette.session(request), data["name"]
    )
    return JSONResponse(data, status_code=201)


def add_item_slowly(session: Session, name: str, seconds: float) -> Item:
    item = add_item_sync(session, name)
    time.sleep(seconds)
    return item


async def create_slowly_sync(request: Request) -> JSONResponse:
    data = await request.json()
    session = await portside_starlette.session(request)
    item = await run_in_threadpool(add_item_slowly, session, data["name"], data["seconds"])
    return JSONResponse(as_json(item), status_code=201)


def same_session_sync(request: Request) -> JSONResponse:
    first = portside_starlette.session_from_thread(request)
    second = portside_starlette.session_from_thread(request)
    return JSONResponse({"same": first is second})


def use_ended_session_sync(session: Session, results: list[str]) -> None:
    try:
        session.exec(select(Item))
    except Exception as exc:
        results.append(type(exc).__name__)
    else:
        results.append("none")


async def create_then_background_sync(request: Request) -> JSONResponse:
    item = await add_item_in_thread(request)
    session = await portside_starlette.session(request)
    # A sync background task runs in a worker thread, like the blocking work above.
    task = BackgroundTask(use_ended_session_sync, session, background_results(request))
    return JSONResponse(as_json(item), status_code=201, background=task)


def count_analytics_sync(request: Request) -> JSONResponse:
    session = portside_starlette.session_from_thread(request, "analytics")
    return JSONResponse({"count": session.exec(select(func.count()).select_from(Item)).one()})


async def create_hooked_sync(request: Request) -> JSONResponse:
    data = await request.json()
    item = await add_item_in_thread(request)
    register_callbacks(request, await portside_starlette.session(request), data["name"])
    return JSONResponse(as_json(item), status_code=data["status"])


def bump_blocking(session: Session, by: int) -> int:
    counter = session.get(Counter, 1)
    assert counter is not None
    time.sleep(RACE_WINDOW)  # others read the same value meanwhile
    counter.value += by
    session.flush()
    return counter.value


async def bump_sync(request: Request) -> JSONResponse:
    by = (await request.json())["by"]
    session = await portside_starlette.session(request)
    return JSONResponse({"value": await run_in_threadpool(bump_blocking, session, by)})


def transfer_blocking(session: Session, first: int, second: int) -> None:
    session.exec(add_one(first))
    time.sleep(LOCK_WINDOW)  # the other request locks its first row meanwhile
    session.exec(add_one(second))


async def transfer_sync(request: Request) -> JSONResponse:
    data = await request.json()
    session = await portside_starlette.session(request)
    await run_in_threadpool(transfer_blocking, session, data["first"], data["second"])
    return JSONResponse({"ok": True})


def slow_query_sync(request: Request) -> JSONResponse:
    session = portside_starlette.session_from_thread(request)
    session.exec(text(runaway_statement(session.connection().dialect.name)))
    return JSONResponse({"ok": True})


def create_then_runaway_blocking(session: Session, name: str) -> Item:
    item = add_item_sync(session, name)
    session.exec(text(runaway_statement(session.connection().dialect.name)))
    return item


async def create_then_runaway_sync(request: Request) -> JSONResponse:
    name = (await request.json())["name"]
    session = await portside_starlette.session(request)
    item = await run_in_threadpool(create_then_runaway_blocking, session, name)
    return JSONResponse(as_json(item), status_code=201)


sync_routes: list[BaseRoute] = [
    Route("/items", create_item_sync, methods=["POST"]),
    Route("/items", list_items_sync),
    Route("/items/{item_id:int}", read_item_sync),
    Route("/items/raise", create_then_raise_sync, methods=["POST"]),
    Route("/items/http-error", create_then_conflict_sync, methods=["POST"]),
    Route("/items/return-error", create_then_return_422_sync, methods=["POST"]),
    Route("/items/redirect", create_then_redirect_sync, methods=["POST"]),
    Route("/items/deferred", create_orphan_sync, methods=["POST"]),
    Route("/items/swallowed", create_then_swallow_a_failure_sync, methods=["POST"]),
    Route("/items/slow", create_slowly_sync, methods=["POST"]),
    Route("/items/background", create_then_background_sync, methods=["POST"]),
    Route("/same-session", same_session_sync),
    Route("/items/hooked", create_hooked_sync, methods=["POST"]),
    Route("/counter/increment", serializable(bump_sync), methods=["POST"]),
    Route("/counter/increment-once", serializable_once(bump_sync), methods=["POST"]),
    Route("/slow-query", with_deadline(slow_query_sync)),
    Route("/items/runaway", create_then_runaway_sync, methods=["POST"]),
    Route("/counter/transfer", transaction(retries=RETRY_POLICY)(transfer_sync), methods=["POST"]),
    Route("/counter/transfer-once", transfer_sync, methods=["POST"]),
]


def replica_where_sync(request: Request) -> JSONResponse:
    session = portside_starlette.session_from_thread(request)
    return JSONResponse({"replica": session.exec(select(IN_RECOVERY)).one()})


def replica_primary_sync(request: Request) -> JSONResponse:
    portside_starlette.use_primary(request)
    return replica_where_sync(request)


def replica_write_sync(request: Request) -> JSONResponse:
    add_item_sync(portside_starlette.session_from_thread(request), "written-on-a-get")
    return JSONResponse({})


sync_routes += [
    Route("/replica/where", replica_where_sync),
    Route("/replica/primary", replica_primary_sync),
    Route("/replica/write", replica_write_sync),
]
sync_analytics: list[BaseRoute] = [Route("/analytics/count", count_analytics_sync)]


class StarletteHarness:
    """Builds a Starlette app with portside's lifespan, middleware and accessors."""

    name = "starlette"

    def __init__(self) -> None:
        self.background_results: list[str] = []
        self.hook_events: list[str] = []

    def build_app(
        self, databases: DatabaseSettings | Mapping[str, DatabaseSettings], mode: Mode
    ) -> Starlette:
        routes = [*common, *(sync_routes if mode == "sync" else async_routes)]
        if isinstance(databases, Mapping) and "analytics" in databases:
            routes += sync_analytics if mode == "sync" else async_analytics
        app = Starlette(routes=routes)
        install(app, databases)
        app.state.background_results = self.background_results
        app.state.hook_events = self.hook_events
        app.state.mode = mode
        return app

    def lifecycle(self, app: Starlette) -> Lifecycle:
        return get_lifecycle(app)

    def mount(self, app: Starlette) -> Starlette:
        return Starlette(routes=[Mount("/inner", app)])


class TestStarletteConformance(ConformanceSuite):
    harness = StarletteHarness()


class TestStarletteReplicas(ReplicaConformanceSuite):
    harness = StarletteHarness()
