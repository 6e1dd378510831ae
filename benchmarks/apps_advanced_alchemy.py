"""advanced-alchemy's FastAPI and Litestar integrations, as their documentation uses them.

FastAPI: ``AdvancedAlchemy(config, app=app)`` with ``commit_mode="autocommit"`` and
``Depends(alchemy.provide_session())``. Litestar: ``SQLAlchemyPlugin`` with
``before_send_handler="autocommit"`` and its ``db_session`` provider. Both get the
same pool and SQLite pragmas as every other contestant; their handlers never commit.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at
# definition time, and they name a dependency alias local to the builder.

from collections.abc import Sequence
from typing import Annotated, Any

from advanced_alchemy.extensions import fastapi as aa_fastapi
from advanced_alchemy.extensions import litestar as aa_litestar
from fastapi import Depends, FastAPI, HTTPException
from litestar import Litestar
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from benchmarks import queries
from benchmarks.apps_litestar import session_handlers
from benchmarks.contestant import AppBundle
from benchmarks.databases import BenchDatabase
from benchmarks.driver import as_asgi
from benchmarks.models import LIST_LIMIT, Item, ItemCreate, ItemRead


def _engine_options(database: BenchDatabase) -> dict[str, Any]:
    options = database.engine_options()
    options["pool_recycle"] = int(options["pool_recycle"])
    options["pool_timeout"] = int(options["pool_timeout"])
    return options


def fastapi_app(database: BenchDatabase) -> AppBundle:
    """advanced-alchemy's FastAPI extension, autocommit mode."""
    app = FastAPI()
    config = aa_fastapi.SQLAlchemyAsyncConfig(
        connection_string=database.async_url,
        commit_mode="autocommit",
        engine_config=aa_fastapi.EngineConfig(**_engine_options(database)),
    )
    alchemy = aa_fastapi.AdvancedAlchemy(config=config, app=app)
    engine: AsyncEngine = alchemy.get_async_engine()
    database.install_defaults(engine)
    SessionDep = Annotated[AsyncSession, Depends(alchemy.provide_session())]  # noqa: N806 - a type alias

    @app.get("/items/{item_id}", response_model=ItemRead)
    async def read_item(item_id: int, session: SessionDep) -> Item:
        item = await queries.read_item(session, item_id)
        if item is None:
            raise HTTPException(status_code=404, detail=f"no item {item_id}")
        return item

    @app.get("/items", response_model=list[ItemRead])
    async def list_items(session: SessionDep, limit: int = LIST_LIMIT) -> Sequence[Item]:
        return await queries.list_items(session, limit)

    @app.post("/items", response_model=ItemRead, status_code=201)
    async def create_item(data: ItemCreate, session: SessionDep) -> Item:
        return await queries.add_item(session, data)

    return AppBundle(as_asgi(app), lambda _state: engine)


def litestar_app(database: BenchDatabase) -> AppBundle:
    """advanced-alchemy's Litestar plugin, autocommit before-send handler."""
    config = aa_litestar.SQLAlchemyAsyncConfig(
        connection_string=database.async_url,
        before_send_handler="autocommit",
        engine_config=aa_litestar.EngineConfig(**_engine_options(database)),
    )
    engine: AsyncEngine = config.get_engine()
    database.install_defaults(engine)

    app = Litestar(
        session_handlers(NamedDependency[AsyncSession], commit=False),
        plugins=[aa_litestar.SQLAlchemyPlugin(config=config)],
        openapi_config=None,
        debug=False,
    )
    return AppBundle(as_asgi(app), lambda _state: engine)
