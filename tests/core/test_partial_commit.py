"""Several databases, the second COMMIT fails: say what is true (issue 12, item 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import IntegrityError

from portside import DatabaseSettings, Lifecycle, PartialCommitError
from portside.asgi import UnitOfWorkMiddleware
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Child, Item, metadata

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _databases(tmp_path: Path) -> dict[str, DatabaseSettings]:
    databases = {}
    for name in ("orders", "audit"):
        url = f"sqlite:///{tmp_path / name}.db"
        engine = create_engine(url)
        metadata.create_all(engine)
        engine.dispose()
        databases[name] = DatabaseSettings(url=url)
    return databases


def _count(settings: DatabaseSettings, model: Any) -> int:
    engine = create_engine(settings.sync_url_object)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(model)).scalar_one())
    finally:
        engine.dispose()


async def test_a_failed_second_commit_names_what_was_committed(tmp_path: Path) -> None:
    databases = _databases(tmp_path)
    async with Lifecycle(databases) as lifecycle:
        unit = lifecycle.unit_of_work()
        orders = await unit.async_session("orders")
        audit = await unit.async_session("audit")
        orders.add(Item(name="kept"))
        audit.add(Child(parent_id=999))  # deferred foreign key: only COMMIT fails
        await orders.flush()
        await audit.flush()
        with pytest.raises(PartialCommitError) as caught:
            await unit.finish(commit=True)
        assert caught.value.committed == ("orders",)
        assert caught.value.failed == "audit"
        assert "'orders' committed" in str(caught.value)
        assert caught.value.__cause__ is not None
        assert lifecycle.in_flight == 0
    assert _count(databases["orders"], Item) == 1
    assert _count(databases["audit"], Child) == 0


async def test_a_failed_first_commit_is_not_called_partial(tmp_path: Path) -> None:
    databases = _databases(tmp_path)
    async with Lifecycle(databases) as lifecycle:
        unit = lifecycle.unit_of_work()
        orders = await unit.async_session("orders")
        audit = await unit.async_session("audit")
        orders.add(Child(parent_id=999))
        audit.add(Item(name="never"))
        await orders.flush()
        await audit.flush()
        with pytest.raises(IntegrityError):  # the database's own error, nothing partial
            await unit.finish(commit=True)
    assert _count(databases["audit"], Item) == 0


def test_the_blocking_unit_reports_a_partial_commit(tmp_path: Path) -> None:
    databases = _databases(tmp_path)
    with Lifecycle.blocking(databases) as lifecycle:
        unit = lifecycle.unit_of_work()
        unit.session_blocking("orders").add(Item(name="kept"))
        unit.session_blocking("audit").add(Child(parent_id=999))
        unit.session_blocking("orders").flush()
        unit.session_blocking("audit").flush()
        with pytest.raises(PartialCommitError):
            unit.finish_blocking(commit=True)
    assert _count(databases["orders"], Item) == 1


async def test_the_response_says_the_change_was_saved_only_partly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not "nothing was committed": the 500 body and the log name both databases."""
    databases = _databases(tmp_path)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            async with Lifecycle(databases) as lifecycle:
                scope["state"]["portside.lifecycle"] = lifecycle
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        unit = scope["portside.unit_of_work"]
        (await unit.async_session("orders")).add(Item(name="kept"))
        (await unit.async_session("audit")).add(Child(parent_id=999))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with AppRunner(UnitOfWorkMiddleware(app)) as runner:
        response = await runner.request("POST", "/")
    assert response.status == 500
    detail = json.loads(response.body)["detail"]
    assert "'orders' committed" in detail
    assert "'audit' failed" in detail
    assert "nothing was committed" not in detail
    assert any("committed, database 'audit' did not" in r.getMessage() for r in caplog.records)
    assert _count(databases["orders"], Item) == 1
