"""The conformance harness for portside-litestar, written as a Litestar app would be.

Handlers ask for ``db_session`` (async) or ``sync_db_session`` (sync handlers, run in
worker threads with ``sync_to_thread=True``) and never commit: the plugin commits
before the response starts, or rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from litestar import Litestar, Request, WebSocket, get, post, websocket
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException, WebSocketDisconnect
from litestar.params import Body, FromPath
from litestar.response import Redirect, Response
from litestar.types import ControllerRouterHandler
from sqlalchemy import func, insert, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

import portside
from portside import AsyncSession, DatabaseSettings, Lifecycle, Session
from portside_litestar import (
    AsyncSessionDep,
    LifecycleDep,
    PortsidePlugin,
    SessionDep,
    async_session_dependency,
    get_lifecycle,
    session_dependency,
    transaction,
    use_primary,
)
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

#: Whether the server that answers is a standby (the replica scenarios' probe).
IN_RECOVERY = func.pg_is_in_recovery()

MISSING_PARENT = 999_999


@dataclass
class NameIn:
    name: str


@dataclass
class SlowIn:
    name: str
    seconds: float


@dataclass
class HookedIn:
    name: str
    status: int


@dataclass
class BumpIn:
    by: int


@dataclass
class TransferIn:
    first: int
    second: int


# Body() marks `data` as the JSON request body (Litestar 3 no longer infers it).
NameBody = Annotated[NameIn, Body()]
SlowBody = Annotated[SlowIn, Body()]
HookedBody = Annotated[HookedIn, Body()]
BumpBody = Annotated[BumpIn, Body()]
TransferBody = Annotated[TransferIn, Body()]

SERIALIZABLE = transaction(retries=RETRY_POLICY, isolation_level="SERIALIZABLE")
SERIALIZABLE_ONCE = transaction(isolation_level="SERIALIZABLE")
WITH_DEADLINE = transaction(deadline=SLOW_QUERY_DEADLINE)


def register_callbacks(state: State, session: Session | AsyncSession, name: str) -> None:
    events: list[str] = state.hook_events
    portside.on_commit(session, lambda: events.append(f"commit:{name}"))
    portside.on_rollback(session, lambda: events.append(f"rollback:{name}"))


def as_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "name": item.name}


@get("/untouched")
async def untouched() -> dict[str, bool]:
    return {"ok": True}


# -- async handlers ------------------------------------------------------------------


async def add_item(session: AsyncSession, name: str) -> Item:
    item = Item(name=name)
    session.add(item)
    await session.flush()
    return item


@post("/items")
async def create_item(db_session: AsyncSessionDep, data: NameBody) -> dict[str, Any]:
    return as_json(await add_item(db_session, data.name))


@get("/items/{item_id:int}")
async def read_item(db_session: AsyncSessionDep, item_id: FromPath[int]) -> dict[str, Any]:
    item = await db_session.get(Item, item_id)
    if item is None:
        raise NotFoundException(f"no item {item_id}")
    return as_json(item)


@get("/items")
async def list_items(db_session: AsyncSessionDep) -> dict[str, list[str]]:
    names = await db_session.exec(select(Item.name).order_by(col(Item.name)))
    return {"names": list(names)}


@post("/items/raise")
async def create_then_raise(db_session: AsyncSessionDep, data: NameBody) -> None:
    await add_item(db_session, data.name)
    raise RuntimeError("the handler failed after writing")


@post("/items/http-error")
async def create_then_conflict(db_session: AsyncSessionDep, data: NameBody) -> None:
    await add_item(db_session, data.name)
    raise HTTPException(status_code=409, detail="conflict")


@post("/items/return-error")
async def create_then_return_422(db_session: AsyncSessionDep, data: NameBody) -> Response[Any]:
    await add_item(db_session, data.name)
    return Response({"detail": "rejected"}, status_code=422)


@post("/items/redirect")
async def create_then_redirect(db_session: AsyncSessionDep, data: NameBody) -> Redirect:
    await add_item(db_session, data.name)
    return Redirect("/items", status_code=303)


@post("/items/deferred")
async def create_orphan(db_session: AsyncSessionDep, data: NameBody) -> dict[str, str]:
    db_session.add(Child(parent_id=MISSING_PARENT))
    await db_session.flush()  # accepted: the foreign key is only checked at COMMIT
    return {"name": data.name}


@post("/items/swallowed")
async def create_then_swallow_a_failure(
    db_session: AsyncSessionDep, data: NameBody
) -> dict[str, str]:
    await add_item(db_session, f"{data.name}-kept")
    with suppress(IntegrityError):  # swallowed: PostgreSQL aborts the transaction
        await db_session.exec(insert(Item).values(name=data.name))  # a duplicate: fails
    return {"name": data.name}


@post("/items/runaway")
async def create_then_runaway(db_session: AsyncSessionDep, data: NameBody) -> dict[str, Any]:
    item = await add_item(db_session, data.name)
    dialect = (await db_session.connection()).dialect.name
    await db_session.exec(text(runaway_statement(dialect)))
    return as_json(item)


@post("/items/slow")
async def create_slowly(db_session: AsyncSessionDep, data: SlowBody) -> dict[str, Any]:
    item = await add_item(db_session, data.name)
    await anyio.sleep(data.seconds)
    return as_json(item)


@get("/same-session", dependencies={"other_session": async_session_dependency()})
async def same_session(
    db_session: AsyncSessionDep, other_session: AsyncSessionDep
) -> dict[str, bool]:
    return {"same": db_session is other_session}


@get("/sync-on-loop")
async def sync_session_on_the_loop(sync_db_session: SessionDep) -> dict[str, int]:
    return {"count": len(sync_db_session.exec(select(Item)).all())}  # must raise: on the loop


@websocket("/ws/request-session")
async def websocket_request_session(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    provider = async_session_dependency().dependency
    try:  # what the db_session provider runs, called where its error can be reported
        await provider(scope=socket.scope)
    except Exception as exc:
        await socket.send_json({"error": type(exc).__name__})
    else:
        await socket.send_json({"error": "none"})


def store_item_blocking(lifecycle: Lifecycle, name: str) -> int:
    with lifecycle.session() as session:
        return add_item_sync(session, name).id or 0


@websocket("/ws/items")
async def websocket_items(socket: WebSocket[Any, Any, Any], lifecycle: LifecycleDep) -> None:
    await socket.accept()
    sync = socket.app.state.mode == "sync"
    try:
        while True:
            name = (await socket.receive_json())["name"]
            if sync:
                item_id = await anyio.to_thread.run_sync(store_item_blocking, lifecycle, name)
            else:
                async with lifecycle.async_session() as session:
                    item_id = (await add_item(session, name)).id or 0
            await socket.send_json({"id": item_id})
    except WebSocketDisconnect:
        return


async def use_ended_session(session: AsyncSession, results: list[str]) -> None:
    try:
        await session.exec(select(Item))
    except Exception as exc:
        results.append(type(exc).__name__)
    else:
        results.append("none")


@post("/items/background")
async def create_then_background(
    db_session: AsyncSessionDep, data: NameBody, state: State
) -> Response[dict[str, Any]]:
    item = await add_item(db_session, data.name)
    task = BackgroundTask(use_ended_session, db_session, state.background_results)
    return Response(as_json(item), status_code=201, background=task)


@get("/analytics/count")
async def count_analytics(analytics_session: AsyncSessionDep) -> dict[str, int]:
    count = (await analytics_session.exec(select(func.count()).select_from(Item))).one()
    return {"count": count}


@get("/replica/where")
async def replica_where(db_session: AsyncSessionDep) -> dict[str, bool]:
    return {"replica": (await db_session.exec(select(IN_RECOVERY))).one()}


@get("/replica/primary")
async def replica_primary(
    request: Request[Any, Any, Any], db_session: AsyncSessionDep
) -> dict[str, bool]:
    use_primary(request)
    return {"replica": (await db_session.exec(select(IN_RECOVERY))).one()}


@get("/replica/write")
async def replica_write(db_session: AsyncSessionDep) -> dict[str, int]:
    return {"id": (await add_item(db_session, "written-on-a-get")).id or 0}


@post("/items/hooked")
async def create_hooked(
    db_session: AsyncSessionDep, data: HookedBody, state: State
) -> Response[dict[str, Any]]:
    item = await add_item(db_session, data.name)
    register_callbacks(state, db_session, data.name)
    return Response(as_json(item), status_code=data.status)


async def bump(session: AsyncSession, by: int) -> dict[str, int]:
    counter = await session.get(Counter, 1)
    assert counter is not None
    await anyio.sleep(RACE_WINDOW)  # others read the same value meanwhile
    counter.value += by
    await session.flush()
    return {"value": counter.value}


@post("/counter/increment", opt=SERIALIZABLE, status_code=200)
async def increment(db_session: AsyncSessionDep, data: BumpBody) -> dict[str, int]:
    return await bump(db_session, data.by)


@post("/counter/increment-once", opt=SERIALIZABLE_ONCE, status_code=200)
async def increment_once(db_session: AsyncSessionDep, data: BumpBody) -> dict[str, int]:
    return await bump(db_session, data.by)


async def transfer(session: AsyncSession, data: TransferIn) -> dict[str, bool]:
    await session.exec(add_one(data.first))
    await anyio.sleep(LOCK_WINDOW)  # the other request locks its first row meanwhile
    await session.exec(add_one(data.second))
    return {"ok": True}


@post("/counter/transfer", opt=transaction(retries=RETRY_POLICY), status_code=200)
async def transfer_retried(db_session: AsyncSessionDep, data: TransferBody) -> dict[str, bool]:
    return await transfer(db_session, data)


@post("/counter/transfer-once", status_code=200)
async def transfer_once(db_session: AsyncSessionDep, data: TransferBody) -> dict[str, bool]:
    return await transfer(db_session, data)


@get("/slow-query", opt=WITH_DEADLINE)
async def slow_query(db_session: AsyncSessionDep) -> dict[str, bool]:
    dialect = (await db_session.connection()).dialect.name
    await db_session.exec(text(runaway_statement(dialect)))
    return {"ok": True}


ASYNC_HANDLERS: list[ControllerRouterHandler] = [
    create_hooked,
    increment,
    increment_once,
    slow_query,
    transfer_retried,
    transfer_once,
    replica_where,
    replica_primary,
    replica_write,
    create_item,
    read_item,
    list_items,
    create_then_raise,
    create_then_conflict,
    create_then_return_422,
    create_then_redirect,
    create_orphan,
    create_then_swallow_a_failure,
    create_slowly,
    create_then_runaway,
    same_session,
    create_then_background,
]


# -- sync handlers: the same endpoints, run in worker threads --------------------------


def add_item_sync(session: Session, name: str) -> Item:
    item = Item(name=name)
    session.add(item)
    session.flush()
    return item


@post("/items", sync_to_thread=True)
def create_item_sync(sync_db_session: SessionDep, data: NameBody) -> dict[str, Any]:
    return as_json(add_item_sync(sync_db_session, data.name))


@get("/items/{item_id:int}", sync_to_thread=True)
def read_item_sync(sync_db_session: SessionDep, item_id: FromPath[int]) -> dict[str, Any]:
    item = sync_db_session.get(Item, item_id)
    if item is None:
        raise NotFoundException(f"no item {item_id}")
    return as_json(item)


@get("/items", sync_to_thread=True)
def list_items_sync(sync_db_session: SessionDep) -> dict[str, list[str]]:
    return {"names": list(sync_db_session.exec(select(Item.name).order_by(col(Item.name))))}


@post("/items/raise", sync_to_thread=True)
def create_then_raise_sync(sync_db_session: SessionDep, data: NameBody) -> None:
    add_item_sync(sync_db_session, data.name)
    raise RuntimeError("the handler failed after writing")


@post("/items/http-error", sync_to_thread=True)
def create_then_conflict_sync(sync_db_session: SessionDep, data: NameBody) -> None:
    add_item_sync(sync_db_session, data.name)
    raise HTTPException(status_code=409, detail="conflict")


@post("/items/return-error", sync_to_thread=True)
def create_then_return_422_sync(sync_db_session: SessionDep, data: NameBody) -> Response[Any]:
    add_item_sync(sync_db_session, data.name)
    return Response({"detail": "rejected"}, status_code=422)


@post("/items/redirect", sync_to_thread=True)
def create_then_redirect_sync(sync_db_session: SessionDep, data: NameBody) -> Redirect:
    add_item_sync(sync_db_session, data.name)
    return Redirect("/items", status_code=303)


@post("/items/deferred", sync_to_thread=True)
def create_orphan_sync(sync_db_session: SessionDep, data: NameBody) -> dict[str, str]:
    sync_db_session.add(Child(parent_id=MISSING_PARENT))
    sync_db_session.flush()  # accepted: the foreign key is only checked at COMMIT
    return {"name": data.name}


@post("/items/swallowed", sync_to_thread=True)
def create_then_swallow_a_failure_sync(
    sync_db_session: SessionDep, data: NameBody
) -> dict[str, str]:
    add_item_sync(sync_db_session, f"{data.name}-kept")
    with suppress(IntegrityError):  # swallowed: PostgreSQL aborts the transaction
        sync_db_session.exec(insert(Item).values(name=data.name))  # a duplicate: fails
    return {"name": data.name}


@post("/items/runaway", sync_to_thread=True)
def create_then_runaway_sync(sync_db_session: SessionDep, data: NameBody) -> dict[str, Any]:
    item = add_item_sync(sync_db_session, data.name)
    sync_db_session.exec(text(runaway_statement(sync_db_session.connection().dialect.name)))
    return as_json(item)


@post("/items/slow", sync_to_thread=True)
def create_slowly_sync(sync_db_session: SessionDep, data: SlowBody) -> dict[str, Any]:
    item = add_item_sync(sync_db_session, data.name)
    time.sleep(data.seconds)
    return as_json(item)


@get(
    "/same-session",
    dependencies={"other_session": session_dependency()},
    sync_to_thread=True,
)
def same_session_sync(sync_db_session: SessionDep, other_session: SessionDep) -> dict[str, bool]:
    return {"same": sync_db_session is other_session}


def use_ended_session_sync(session: Session, results: list[str]) -> None:
    try:
        session.exec(select(Item))
    except Exception as exc:
        results.append(type(exc).__name__)
    else:
        results.append("none")


@post("/items/background", sync_to_thread=True)
def create_then_background_sync(
    sync_db_session: SessionDep, data: NameBody, state: State
) -> Response[dict[str, Any]]:
    item = add_item_sync(sync_db_session, data.name)
    # A sync background task runs in a worker thread, like the handler.
    task = BackgroundTask(use_ended_session_sync, sync_db_session, state.background_results)
    return Response(as_json(item), status_code=201, background=task)


@get("/analytics/count", sync_to_thread=True)
def count_analytics_sync(analytics_session: SessionDep) -> dict[str, int]:
    return {"count": analytics_session.exec(select(func.count()).select_from(Item)).one()}


@get("/replica/where", sync_to_thread=True)
def replica_where_sync(sync_db_session: SessionDep) -> dict[str, bool]:
    return {"replica": sync_db_session.exec(select(IN_RECOVERY)).one()}


@get("/replica/primary", sync_to_thread=True)
def replica_primary_sync(
    request: Request[Any, Any, Any], sync_db_session: SessionDep
) -> dict[str, bool]:
    use_primary(request)
    return {"replica": sync_db_session.exec(select(IN_RECOVERY)).one()}


@get("/replica/write", sync_to_thread=True)
def replica_write_sync(sync_db_session: SessionDep) -> dict[str, int]:
    return {"id": add_item_sync(sync_db_session, "written-on-a-get").id or 0}


@post("/items/hooked", sync_to_thread=True)
def create_hooked_sync(
    sync_db_session: SessionDep, data: HookedBody, state: State
) -> Response[dict[str, Any]]:
    item = add_item_sync(sync_db_session, data.name)
    register_callbacks(state, sync_db_session, data.name)
    return Response(as_json(item), status_code=data.status)


def bump_sync(session: Session, by: int) -> dict[str, int]:
    counter = session.get(Counter, 1)
    assert counter is not None
    time.sleep(RACE_WINDOW)  # others read the same value meanwhile
    counter.value += by
    session.flush()
    return {"value": counter.value}


@post("/counter/increment", opt=SERIALIZABLE, status_code=200, sync_to_thread=True)
def increment_sync(sync_db_session: SessionDep, data: BumpBody) -> dict[str, int]:
    return bump_sync(sync_db_session, data.by)


@post("/counter/increment-once", opt=SERIALIZABLE_ONCE, status_code=200, sync_to_thread=True)
def increment_once_sync(sync_db_session: SessionDep, data: BumpBody) -> dict[str, int]:
    return bump_sync(sync_db_session, data.by)


def transfer_sync(session: Session, data: TransferIn) -> dict[str, bool]:
    session.exec(add_one(data.first))
    time.sleep(LOCK_WINDOW)  # the other request locks its first row meanwhile
    session.exec(add_one(data.second))
    return {"ok": True}


@post(
    "/counter/transfer",
    opt=transaction(retries=RETRY_POLICY),
    status_code=200,
    sync_to_thread=True,
)
def transfer_retried_sync(sync_db_session: SessionDep, data: TransferBody) -> dict[str, bool]:
    return transfer_sync(sync_db_session, data)


@post("/counter/transfer-once", status_code=200, sync_to_thread=True)
def transfer_once_sync(sync_db_session: SessionDep, data: TransferBody) -> dict[str, bool]:
    return transfer_sync(sync_db_session, data)


@get("/slow-query", opt=WITH_DEADLINE, sync_to_thread=True)
def slow_query_sync(sync_db_session: SessionDep) -> dict[str, bool]:
    sync_db_session.exec(text(runaway_statement(sync_db_session.connection().dialect.name)))
    return {"ok": True}


SYNC_HANDLERS: list[ControllerRouterHandler] = [
    create_hooked_sync,
    increment_sync,
    increment_once_sync,
    slow_query_sync,
    transfer_retried_sync,
    transfer_once_sync,
    replica_where_sync,
    replica_primary_sync,
    replica_write_sync,
    create_item_sync,
    read_item_sync,
    list_items_sync,
    create_then_raise_sync,
    create_then_conflict_sync,
    create_then_return_422_sync,
    create_then_redirect_sync,
    create_orphan_sync,
    create_then_swallow_a_failure_sync,
    create_slowly_sync,
    create_then_runaway_sync,
    same_session_sync,
    create_then_background_sync,
]


class LitestarHarness:
    """Builds a Litestar app with :class:`~portside_litestar.PortsidePlugin`."""

    name = "litestar"

    def __init__(self) -> None:
        self.background_results: list[str] = []
        self.hook_events: list[str] = []

    def build_app(
        self, databases: DatabaseSettings | Mapping[str, DatabaseSettings], mode: Mode
    ) -> Litestar:
        sync = mode == "sync"
        handlers = [
            untouched,
            sync_session_on_the_loop,
            websocket_items,
            websocket_request_session,
            *(SYNC_HANDLERS if sync else ASYNC_HANDLERS),
        ]
        dependencies = {}
        if isinstance(databases, Mapping) and "analytics" in databases:
            handlers.append(count_analytics_sync if sync else count_analytics)
            dependencies["analytics_session"] = (
                session_dependency("analytics") if sync else async_session_dependency("analytics")
            )
        return Litestar(
            handlers,
            plugins=[PortsidePlugin(databases)],
            dependencies=dependencies,
            state=State(
                {
                    "background_results": self.background_results,
                    "hook_events": self.hook_events,
                    "mode": mode,
                }
            ),
        )

    def lifecycle(self, app: Litestar) -> Lifecycle:
        return get_lifecycle(app)

    def mount(self, app: Litestar) -> None:
        return None  # Litestar composes apps with Routers, not by mounting apps


class TestLitestarConformance(ConformanceSuite):
    harness = LitestarHarness()


class TestLitestarReplicas(ReplicaConformanceSuite):
    harness = LitestarHarness()
