"""The conformance harness for portside-fastapi, written as a FastAPI app would be.

Async endpoints take :data:`~portside_fastapi.AsyncSessionDep`; sync (``def``)
endpoints take :data:`~portside_fastapi.SessionDep` and run in FastAPI's worker
threads. No endpoint commits: ``UnitOfWorkMiddleware`` commits before the response
starts, or rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Annotated

import anyio
from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    FastAPI,
    HTTPException,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel
from sqlalchemy import func, insert, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

import portside
from portside import AsyncSession, DatabaseSettings, Lifecycle, Session
from portside_fastapi import (
    AsyncSessionDep,
    LifecycleDep,
    SessionDep,
    async_session_dependency,
    get_lifecycle,
    install,
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

MISSING_PARENT = 999_999
#: Whether the server that answers is a standby (the replica scenarios' probe).
IN_RECOVERY = func.pg_is_in_recovery()

AnalyticsSessionDep = Annotated[AsyncSession, Depends(async_session_dependency("analytics"))]
SyncAnalyticsSessionDep = Annotated[Session, Depends(session_dependency("analytics"))]
# use_cache=False makes FastAPI resolve this twice: the unit of work, not FastAPI's
# dependency cache, is what hands both parameters the same session.
UncachedSessionDep = Annotated[AsyncSession, Depends(async_session_dependency(), use_cache=False)]
UncachedSyncSessionDep = Annotated[Session, Depends(session_dependency(), use_cache=False)]


class NameIn(BaseModel):
    name: str


class HookedIn(BaseModel):
    name: str
    status: int


class BumpIn(BaseModel):
    by: int


class TransferIn(BaseModel):
    first: int
    second: int


SERIALIZABLE = transaction(retries=RETRY_POLICY, isolation_level="SERIALIZABLE")
SERIALIZABLE_ONCE = transaction(isolation_level="SERIALIZABLE")
WITH_DEADLINE = transaction(deadline=SLOW_QUERY_DEADLINE)


def register_callbacks(request: Request, session: Session | AsyncSession, name: str) -> None:
    events: list[str] = request.app.state.hook_events
    portside.on_commit(session, lambda: events.append(f"commit:{name}"))
    portside.on_rollback(session, lambda: events.append(f"rollback:{name}"))


class SlowIn(BaseModel):
    name: str
    seconds: float


common = APIRouter()


@common.get("/untouched")
async def untouched() -> dict[str, bool]:
    return {"ok": True}


@common.get("/sync-on-loop")
async def sync_session_on_the_loop(session: SessionDep) -> dict[str, int]:
    return {"count": len(session.exec(select(Item)).all())}  # must raise: on the loop


@common.websocket("/ws/request-session")
async def websocket_request_session(websocket: WebSocket) -> None:
    await websocket.accept()
    try:  # what AsyncSessionDep runs, called where its error can be reported
        await async_session_dependency()(websocket)
    except Exception as exc:
        await websocket.send_json({"error": type(exc).__name__})
    else:
        await websocket.send_json({"error": "none"})


def store_item_blocking(lifecycle: Lifecycle, name: str) -> int:
    with lifecycle.session() as session:
        return add_item_sync(session, name).id or 0


@common.websocket("/ws/items")
async def websocket_items(websocket: WebSocket, lifecycle: LifecycleDep) -> None:
    await websocket.accept()
    sync = websocket.app.state.mode == "sync"
    try:
        while True:
            name = (await websocket.receive_json())["name"]
            if sync:
                item_id = await anyio.to_thread.run_sync(store_item_blocking, lifecycle, name)
            else:
                async with lifecycle.async_session() as session:
                    item_id = (await add_item(session, name)).id or 0
            await websocket.send_json({"id": item_id})
    except WebSocketDisconnect:
        return


def background_results(request: Request) -> list[str]:
    """Where background tasks report what using the request's session raised."""
    results: list[str] = request.app.state.background_results
    return results


BackgroundResults = Annotated[list[str], Depends(background_results)]


# -- async endpoints -----------------------------------------------------------------

async_api = APIRouter()


@async_api.post("/items/hooked")
async def create_hooked(data: HookedIn, request: Request, session: AsyncSessionDep) -> JSONResponse:
    item = await add_item(session, data.name)
    register_callbacks(request, session, data.name)
    return JSONResponse({"id": item.id, "name": item.name}, status_code=data.status)


async def bump(data: BumpIn, session: AsyncSession) -> dict[str, int]:
    counter = await session.get(Counter, 1)
    assert counter is not None
    await anyio.sleep(RACE_WINDOW)  # others read the same value meanwhile
    counter.value += data.by
    await session.flush()
    return {"value": counter.value}


@async_api.post("/counter/increment", dependencies=[SERIALIZABLE])
async def increment(data: BumpIn, session: AsyncSessionDep) -> dict[str, int]:
    return await bump(data, session)


@async_api.post("/counter/increment-once", dependencies=[SERIALIZABLE_ONCE])
async def increment_once(data: BumpIn, session: AsyncSessionDep) -> dict[str, int]:
    return await bump(data, session)


async def transfer(data: TransferIn, session: AsyncSession) -> dict[str, bool]:
    await session.exec(add_one(data.first))
    await anyio.sleep(LOCK_WINDOW)  # the other request locks its first row meanwhile
    await session.exec(add_one(data.second))
    return {"ok": True}


@async_api.post("/counter/transfer", dependencies=[transaction(retries=RETRY_POLICY)])
async def transfer_retried(data: TransferIn, session: AsyncSessionDep) -> dict[str, bool]:
    return await transfer(data, session)


@async_api.post("/counter/transfer-once")
async def transfer_once(data: TransferIn, session: AsyncSessionDep) -> dict[str, bool]:
    return await transfer(data, session)


@async_api.get("/slow-query", dependencies=[WITH_DEADLINE])
async def slow_query(session: AsyncSessionDep) -> dict[str, bool]:
    dialect = (await session.connection()).dialect.name
    await session.exec(text(runaway_statement(dialect)))
    return {"ok": True}


async def add_item(session: AsyncSession, name: str) -> Item:
    item = Item(name=name)
    session.add(item)
    await session.flush()
    return item


@async_api.post("/items", status_code=201)
async def create_item(data: NameIn, session: AsyncSessionDep) -> Item:
    return await add_item(session, data.name)


@async_api.get("/items/{item_id}")
async def read_item(item_id: int, session: AsyncSessionDep) -> Item:
    item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return item


@async_api.get("/items")
async def list_items(session: AsyncSessionDep) -> dict[str, list[str]]:
    names = await session.exec(select(Item.name).order_by(col(Item.name)))
    return {"names": list(names)}


@async_api.post("/items/raise")
async def create_then_raise(data: NameIn, session: AsyncSessionDep) -> None:
    await add_item(session, data.name)
    raise RuntimeError("the handler failed after writing")


@async_api.post("/items/http-error")
async def create_then_conflict(data: NameIn, session: AsyncSessionDep) -> None:
    await add_item(session, data.name)
    raise HTTPException(status_code=409, detail="conflict")


@async_api.post("/items/return-error")
async def create_then_return_422(data: NameIn, session: AsyncSessionDep) -> JSONResponse:
    await add_item(session, data.name)
    return JSONResponse({"detail": "rejected"}, status_code=422)


@async_api.post("/items/redirect")
async def create_then_redirect(data: NameIn, session: AsyncSessionDep) -> RedirectResponse:
    await add_item(session, data.name)
    return RedirectResponse("/items", status_code=303)


@async_api.post("/items/deferred", status_code=201)
async def create_orphan(data: NameIn, session: AsyncSessionDep) -> NameIn:
    session.add(Child(parent_id=MISSING_PARENT))
    await session.flush()  # accepted: the foreign key is only checked at COMMIT
    return data


@async_api.post("/items/swallowed", status_code=201)
async def create_then_swallow_a_failure(data: NameIn, session: AsyncSessionDep) -> NameIn:
    await add_item(session, f"{data.name}-kept")
    with suppress(IntegrityError):  # swallowed: PostgreSQL aborts the transaction
        await session.exec(insert(Item).values(name=data.name))  # a duplicate: fails
    return data


@async_api.post("/items/runaway", status_code=201)
async def create_then_runaway(data: NameIn, session: AsyncSessionDep) -> Item:
    item = await add_item(session, data.name)
    dialect = (await session.connection()).dialect.name
    await session.exec(text(runaway_statement(dialect)))
    return item


@async_api.post("/items/slow", status_code=201)
async def create_slowly(data: SlowIn, session: AsyncSessionDep) -> Item:
    item = await add_item(session, data.name)
    await anyio.sleep(data.seconds)
    return item


@async_api.get("/replica/where")
async def replica_where(session: AsyncSessionDep) -> dict[str, bool]:
    return {"replica": (await session.exec(select(IN_RECOVERY))).one()}


@async_api.get("/replica/primary")
async def replica_primary(request: Request, session: AsyncSessionDep) -> dict[str, bool]:
    use_primary(request)
    return {"replica": (await session.exec(select(IN_RECOVERY))).one()}


@async_api.get("/replica/write")
async def replica_write(session: AsyncSessionDep) -> dict[str, int]:
    return {"id": (await add_item(session, "written-on-a-get")).id or 0}


@async_api.get("/same-session")
async def same_session(session: AsyncSessionDep, other: UncachedSessionDep) -> dict[str, bool]:
    return {"same": session is other}


async def use_ended_session(session: AsyncSession, results: list[str]) -> None:
    try:
        await session.exec(select(Item))
    except Exception as exc:
        results.append(type(exc).__name__)
    else:
        results.append("none")


@async_api.post("/items/background", status_code=201)
async def create_then_background(
    data: NameIn, session: AsyncSessionDep, tasks: BackgroundTasks, results: BackgroundResults
) -> Item:
    item = await add_item(session, data.name)
    tasks.add_task(use_ended_session, session, results)
    return item


async_analytics = APIRouter()


@async_analytics.get("/analytics/count")
async def count_analytics(session: AnalyticsSessionDep) -> dict[str, int]:
    return {"count": (await session.exec(select(func.count()).select_from(Item))).one()}


# -- sync endpoints: the same, as `def` endpoints run in worker threads ---------------

sync_api = APIRouter()


@sync_api.post("/items/hooked")
def create_hooked_sync(data: HookedIn, request: Request, session: SessionDep) -> JSONResponse:
    item = add_item_sync(session, data.name)
    register_callbacks(request, session, data.name)
    return JSONResponse({"id": item.id, "name": item.name}, status_code=data.status)


def bump_sync(data: BumpIn, session: Session) -> dict[str, int]:
    counter = session.get(Counter, 1)
    assert counter is not None
    time.sleep(RACE_WINDOW)  # others read the same value meanwhile
    counter.value += data.by
    session.flush()
    return {"value": counter.value}


@sync_api.post("/counter/increment", dependencies=[SERIALIZABLE])
def increment_sync(data: BumpIn, session: SessionDep) -> dict[str, int]:
    return bump_sync(data, session)


@sync_api.post("/counter/increment-once", dependencies=[SERIALIZABLE_ONCE])
def increment_once_sync(data: BumpIn, session: SessionDep) -> dict[str, int]:
    return bump_sync(data, session)


def transfer_sync(data: TransferIn, session: Session) -> dict[str, bool]:
    session.exec(add_one(data.first))
    time.sleep(LOCK_WINDOW)  # the other request locks its first row meanwhile
    session.exec(add_one(data.second))
    return {"ok": True}


@sync_api.post("/counter/transfer", dependencies=[transaction(retries=RETRY_POLICY)])
def transfer_retried_sync(data: TransferIn, session: SessionDep) -> dict[str, bool]:
    return transfer_sync(data, session)


@sync_api.post("/counter/transfer-once")
def transfer_once_sync(data: TransferIn, session: SessionDep) -> dict[str, bool]:
    return transfer_sync(data, session)


@sync_api.get("/slow-query", dependencies=[WITH_DEADLINE])
def slow_query_sync(session: SessionDep) -> dict[str, bool]:
    session.exec(text(runaway_statement(session.connection().dialect.name)))
    return {"ok": True}


def add_item_sync(session: Session, name: str) -> Item:
    item = Item(name=name)
    session.add(item)
    session.flush()
    return item


@sync_api.post("/items", status_code=201)
def create_item_sync(data: NameIn, session: SessionDep) -> Item:
    return add_item_sync(session, data.name)


@sync_api.get("/items/{item_id}")
def read_item_sync(item_id: int, session: SessionDep) -> Item:
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return item


@sync_api.get("/items")
def list_items_sync(session: SessionDep) -> dict[str, list[str]]:
    return {"names": list(session.exec(select(Item.name).order_by(col(Item.name))))}


@sync_api.post("/items/raise")
def create_then_raise_sync(data: NameIn, session: SessionDep) -> None:
    add_item_sync(session, data.name)
    raise RuntimeError("the handler failed after writing")


@sync_api.post("/items/http-error")
def create_then_conflict_sync(data: NameIn, session: SessionDep) -> None:
    add_item_sync(session, data.name)
    raise HTTPException(status_code=409, detail="conflict")


@sync_api.post("/items/return-error")
def create_then_return_422_sync(data: NameIn, session: SessionDep) -> JSONResponse:
    add_item_sync(session, data.name)
    return JSONResponse({"detail": "rejected"}, status_code=422)


@sync_api.post("/items/redirect")
def create_then_redirect_sync(data: NameIn, session: SessionDep) -> RedirectResponse:
    add_item_sync(session, data.name)
    return RedirectResponse("/items", status_code=303)


@sync_api.post("/items/deferred", status_code=201)
def create_orphan_sync(data: NameIn, session: SessionDep) -> NameIn:
    session.add(Child(parent_id=MISSING_PARENT))
    session.flush()  # accepted: the foreign key is only checked at COMMIT
    return data


@sync_api.post("/items/swallowed", status_code=201)
def create_then_swallow_a_failure_sync(data: NameIn, session: SessionDep) -> NameIn:
    add_item_sync(session, f"{data.name}-kept")
    with suppress(IntegrityError):  # swallowed: PostgreSQL aborts the transaction
        session.exec(insert(Item).values(name=data.name))  # a duplicate: fails
    return data


@sync_api.post("/items/runaway", status_code=201)
def create_then_runaway_sync(data: NameIn, session: SessionDep) -> Item:
    item = add_item_sync(session, data.name)
    session.exec(text(runaway_statement(session.connection().dialect.name)))
    return item


@sync_api.post("/items/slow", status_code=201)
def create_slowly_sync(data: SlowIn, session: SessionDep) -> Item:
    item = add_item_sync(session, data.name)
    time.sleep(data.seconds)
    return item


@sync_api.get("/replica/where")
def replica_where_sync(session: SessionDep) -> dict[str, bool]:
    return {"replica": session.exec(select(IN_RECOVERY)).one()}


@sync_api.get("/replica/primary")
def replica_primary_sync(request: Request, session: SessionDep) -> dict[str, bool]:
    use_primary(request)
    return {"replica": session.exec(select(IN_RECOVERY)).one()}


@sync_api.get("/replica/write")
def replica_write_sync(session: SessionDep) -> dict[str, int]:
    return {"id": add_item_sync(session, "written-on-a-get").id or 0}


@sync_api.get("/same-session")
def same_session_sync(session: SessionDep, other: UncachedSyncSessionDep) -> dict[str, bool]:
    return {"same": session is other}


def use_ended_session_sync(session: Session, results: list[str]) -> None:
    try:
        session.exec(select(Item))
    except Exception as exc:
        results.append(type(exc).__name__)
    else:
        results.append("none")


@sync_api.post("/items/background", status_code=201)
def create_then_background_sync(
    data: NameIn, session: SessionDep, tasks: BackgroundTasks, results: BackgroundResults
) -> Item:
    item = add_item_sync(session, data.name)
    # A sync background task runs in a worker thread, like the endpoint.
    tasks.add_task(use_ended_session_sync, session, results)
    return item


sync_analytics = APIRouter()


@sync_analytics.get("/analytics/count")
def count_analytics_sync(session: SyncAnalyticsSessionDep) -> dict[str, int]:
    return {"count": session.exec(select(func.count()).select_from(Item)).one()}


class FastAPIHarness:
    """Builds a FastAPI app with portside's lifespan, middleware and dependencies."""

    name = "fastapi"

    def __init__(self) -> None:
        self.background_results: list[str] = []
        self.hook_events: list[str] = []

    def build_app(
        self, databases: DatabaseSettings | Mapping[str, DatabaseSettings], mode: Mode
    ) -> FastAPI:
        app = FastAPI()
        install(app, databases)
        app.state.background_results = self.background_results
        app.state.hook_events = self.hook_events
        app.state.mode = mode
        app.include_router(common)
        app.include_router(sync_api if mode == "sync" else async_api)
        if isinstance(databases, Mapping) and "analytics" in databases:
            app.include_router(sync_analytics if mode == "sync" else async_analytics)
        return app

    def lifecycle(self, app: FastAPI) -> Lifecycle:
        return get_lifecycle(app)

    def mount(self, app: FastAPI) -> FastAPI:
        outer = FastAPI()
        outer.mount("/inner", app)
        return outer


class TestFastAPIConformance(ConformanceSuite):
    harness = FastAPIHarness()


class TestFastAPIReplicas(ReplicaConformanceSuite):
    harness = FastAPIHarness()
