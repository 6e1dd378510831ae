"""A snapshot of an engine's connection pool, read without touching a connection."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool

__all__ = ["PoolStatus", "pool_status"]


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One engine's pool counters (``None`` where the pool cannot tell).

    ``overflow`` counts connections open beyond ``size`` right now (0 or more).
    """

    size: int | None
    checked_out: int | None
    overflow: int | None


def pool_status(engine: Engine) -> PoolStatus:
    """Read the pool counters of ``engine``."""
    pool = engine.pool
    if isinstance(pool, QueuePool):
        # SQLAlchemy counts overflow from -pool_size; report connections beyond the size.
        overflow = max(pool.overflow(), 0)
        return PoolStatus(size=pool.size(), checked_out=pool.checkedout(), overflow=overflow)
    return PoolStatus(size=None, checked_out=None, overflow=None)
