"""Adapters are the ports the seed promised: a session context manager, no close()."""

from __future__ import annotations

from pathlib import Path

import pytest

from portside import AsyncSessionPort, DatabaseSettings, Lifecycle, SessionPort
from portside.sessions import AsyncSession, Session

pytestmark = pytest.mark.anyio


async def test_adapters_satisfy_the_ports(tmp_path: Path) -> None:
    async with Lifecycle(DatabaseSettings(url=f"sqlite:///{tmp_path / 'p.db'}")) as lifecycle:
        database = lifecycle.database()
        sync, async_ = database.require_sync(), database.require_async()
        assert isinstance(sync, SessionPort)
        assert isinstance(async_, AsyncSessionPort)
        assert not hasattr(sync, "close")
        assert not hasattr(async_, "close")
        async with async_.session() as session:
            assert isinstance(session, AsyncSession)
            assert session.sync_session.expire_on_commit is False
        with sync.session() as sync_session:
            assert isinstance(sync_session, Session)
