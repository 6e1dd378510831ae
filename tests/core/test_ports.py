"""Adapters are the ports the core consumes: new sessions on demand, no close()."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import pytest

from portside import AsyncSessionPort, DatabaseSettings, Lifecycle, SessionPort
from portside.sessions import AsyncSession, Session

pytestmark = pytest.mark.anyio


async def test_adapters_satisfy_the_ports(tmp_path: Path) -> None:
    async with Lifecycle(DatabaseSettings(url=f"sqlite:///{tmp_path / 'p.db'}")) as lifecycle:
        database = lifecycle.database()
        sync, async_ = database.sync_port(), database.async_port()
        assert isinstance(sync, SessionPort)
        assert isinstance(async_, AsyncSessionPort)
        assert not hasattr(sync, "close")
        assert not hasattr(async_, "close")
        assert not hasattr(sync, "session")  # no way around the unit of work
        assert not hasattr(async_, "session")
        async with async_.new_session(writes=True) as session:
            assert isinstance(session, AsyncSession)
            assert session.sync_session.expire_on_commit is False

        def sync_side() -> None:
            with sync.new_session(writes=True) as sync_session:
                assert isinstance(sync_session, Session)

        await anyio.to_thread.run_sync(sync_side)
