"""The example's FastAPI app plus a few probe routes the production tests need.

``create_ops_app()`` is the restaurants example (``restaurants.fastapi_app``) with
extra routes under ``/probe``: what a request's connection sees (session state,
backend pid), a sync (psycopg) write and read, slow writes, and the worker's pid.
Serve it with ``uvicorn --factory tests.production.apps:create_ops_app`` (settings
from ``DATABASE_*``).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException
from restaurants.fastapi_app import create_app
from restaurants.models import Restaurant
from sqlalchemy import text

from portside import DatabaseSettings
from portside_fastapi import AsyncSessionDep, SessionDep

_STATE = text(
    "SELECT pg_backend_pid(), current_setting('statement_timeout'), "
    "current_setting('search_path'), current_user"
)

#: What a request may change on its connection, by probe name. ``set_config('role')``
#: is ``SET ROLE`` to the role named by :func:`role_of` after the request's database.
SETTERS = {
    "statement_timeout": "SET statement_timeout = '4321ms'",
    "search_path": "SET search_path = portside_elsewhere, public",
    "role": "SELECT set_config('role', 'portside_role_' || current_database(), false)",
}


def role_of(database: str) -> str:
    """The role the ``role`` probe switches to in ``database`` (created by the tests).

    Roles are cluster-wide: one per database keeps parallel test workers, each with
    databases of its own, from dropping each other's.
    """
    return f"portside_role_{database}"


def _state(row: Any) -> dict[str, Any]:
    pid, timeout, search_path, user = row
    return {"pid": pid, "statement_timeout": timeout, "search_path": search_path, "user": user}


async def state(session: AsyncSessionDep) -> dict[str, Any]:
    """What this request's (async) connection sees."""
    return _state((await session.exec(_STATE)).one())


async def change(what: str, session: AsyncSessionDep) -> dict[str, Any]:
    """Change session state (committed with the request), then report it."""
    if what not in SETTERS:
        raise HTTPException(404, what)
    await session.exec(text(SETTERS[what]))
    return _state((await session.exec(_STATE)).one())


def sync_state(session: SessionDep) -> dict[str, Any]:
    """What this request's sync (psycopg) connection sees."""
    return _state(session.exec(_STATE).one())


def sync_change(what: str, session: SessionDep) -> dict[str, Any]:
    """The sync twin of :func:`change`."""
    if what not in SETTERS:
        raise HTTPException(404, what)
    session.exec(text(SETTERS[what]))
    return _state(session.exec(_STATE).one())


def sync_create(data: dict[str, Any], session: SessionDep) -> dict[str, Any]:
    """Create a restaurant through the sync engine."""
    restaurant = Restaurant.model_validate(data)
    session.add(restaurant)
    session.flush()
    return restaurant.model_dump()


def sync_read(restaurant_id: int, session: SessionDep) -> dict[str, Any]:
    """Read a restaurant through the sync engine."""
    restaurant = session.get(Restaurant, restaurant_id)
    if restaurant is None:
        raise HTTPException(404, f"No restaurant with id {restaurant_id}.")
    return restaurant.model_dump()


async def slow_write(name: str, seconds: float, session: AsyncSessionDep) -> dict[str, Any]:
    """Write a row, then hold the transaction open on the server for ``seconds``."""
    restaurant = Restaurant(name=name, cuisine="slow")
    session.add(restaurant)
    await session.flush()
    await session.exec(text("SELECT pg_sleep(:seconds)").bindparams(seconds=seconds))
    return {"id": restaurant.id, "name": name}


def sync_slow_write(name: str, seconds: float, session: SessionDep) -> dict[str, Any]:
    """The sync (psycopg, worker thread) twin of :func:`slow_write`."""
    restaurant = Restaurant(name=name, cuisine="slow")
    session.add(restaurant)
    session.flush()
    session.exec(text("SELECT pg_sleep(:seconds)").bindparams(seconds=seconds))
    return {"id": restaurant.id, "name": name}


async def slow_app_write(name: str, seconds: float, session: AsyncSessionDep) -> dict[str, Any]:
    """Write a row, then take ``seconds`` in the app (not the database) before answering."""
    restaurant = Restaurant(name=name, cuisine="slow")
    session.add(restaurant)
    await session.flush()
    await anyio.sleep(seconds)
    return {"id": restaurant.id, "name": name}


async def worker() -> dict[str, int]:
    """The serving process (no database)."""
    return {"pid": os.getpid()}


def create_ops_app(database: DatabaseSettings | None = None) -> FastAPI:
    """The example app plus the ``/probe`` routes."""
    app = create_app(database)
    app.add_api_route("/probe/state", state)
    app.add_api_route("/probe/set/{what}", change, methods=["POST"])
    app.add_api_route("/probe/sync-state", sync_state)
    app.add_api_route("/probe/sync-set/{what}", sync_change, methods=["POST"])
    app.add_api_route("/probe/sync-restaurants", sync_create, methods=["POST"], status_code=201)
    app.add_api_route("/probe/sync-restaurants/{restaurant_id}", sync_read)
    app.add_api_route("/probe/slow-write", slow_write, methods=["POST"], status_code=201)
    app.add_api_route("/probe/sync-slow-write", sync_slow_write, methods=["POST"], status_code=201)
    app.add_api_route("/probe/slow-app-write", slow_app_write, methods=["POST"], status_code=201)
    app.add_api_route("/probe/worker", worker)
    return app
