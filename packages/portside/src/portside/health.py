"""What a database's health looks like, and the payload a readiness route answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portside.pool_status import PoolStatus

__all__ = [
    "DatabaseStatus",
    "readiness",
]


@dataclass(frozen=True, slots=True)
class DatabaseStatus:
    """One database's answer to :meth:`portside.Lifecycle.ping`."""

    name: str
    up: bool
    #: Round trip of ``SELECT 1`` in seconds (``None`` when down).
    latency: float | None
    #: One line saying why the database is down, with no secrets (``None`` when up).
    error: str | None = None
    #: Pool counters per engine: ``"sync"`` and/or ``"async"``.
    pools: Mapping[str, PoolStatus] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, as readiness routes and ``portside check --json`` show it."""
        return {
            "up": self.up,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
            "error": self.error,
            "pools": {
                kind: {"size": p.size, "checked_out": p.checked_out, "overflow": p.overflow}
                for kind, p in self.pools.items()
            },
        }


def readiness(statuses: Mapping[str, DatabaseStatus]) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body of a readiness route: 200 if all are up, else 503."""
    down = sorted(name for name, status in statuses.items() if not status.up)
    body: dict[str, Any] = {
        "status": "unavailable" if down else "ok",
        "databases": {name: status.as_dict() for name, status in statuses.items()},
    }
    if down:
        body["down"] = down
    return (503 if down else 200), body
