"""Connection budget: can every worker's pools open their connections at once?

Each worker process builds its own engines (one per kind: sync, async), and each
engine's pool may open ``pool_size + max_overflow`` connections. A deployment of N
workers can so open ``N x engines x (pool_size + max_overflow)`` connections, and
PostgreSQL refuses any beyond ``max_connections`` minus the slots it reserves for
superusers (``superuser_reserved_connections``, and ``reserved_connections`` since
PostgreSQL 16). Behind PgBouncer the app's connections are PgBouncer's clients
(``max_client_conn``), and PgBouncer's own pool (``default_pool_size`` +
``reserve_pool_size`` per database and user) is what reaches the server.

``portside check --workers N`` prints this; :func:`budget` computes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Budget", "ServerSlots", "budget"]


@dataclass(frozen=True, slots=True)
class ServerSlots:
    """The connections a PostgreSQL server accepts from non-superusers."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int  # PostgreSQL 16+; 0 before

    @property
    def available(self) -> int:
        """``max_connections`` minus both reservations."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )

    def describe(self) -> str:
        """``"97 (max_connections 100 - superuser_reserved_connections 3)"``."""
        parts = f"max_connections {self.max_connections} - superuser_reserved_connections "
        parts += str(self.superuser_reserved_connections)
        if self.reserved_connections:
            parts += f" - reserved_connections {self.reserved_connections}"
        return f"{self.available} ({parts})"


@dataclass(frozen=True, slots=True)
class Budget:
    """One database's connection budget; ``problems`` is empty when it fits."""

    workers: int
    engines: tuple[str, ...]
    per_engine: int
    connections: int
    server: ServerSlots
    #: PgBouncer's settings (max_client_conn, default_pool_size, reserve_pool_size),
    #: ``None`` without PgBouncer.
    pgbouncer: dict[str, int] | None
    #: Why PgBouncer's settings are missing although DATABASE_PGBOUNCER is set.
    pgbouncer_unread: str | None
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        """Whether every limit holds."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary, with ``fits``, ``available`` and the text ``summary``."""
        document = asdict(self)
        document["summary"] = self.describe()
        document["server"]["available"] = self.server.available
        document["engines"] = list(self.engines)
        document["problems"] = list(self.problems)
        document["fits"] = self.fits
        return document

    def describe(self) -> list[str]:
        """Lines for ``portside check``'s text output."""
        kinds = "+".join(self.engines)
        engines = f"{len(self.engines)} engine{'s' if len(self.engines) != 1 else ''} ({kinds})"
        lines = [
            f"{self.workers} worker(s) x {engines} x {self.per_engine} "
            f"(pool_size + max_overflow) = {self.connections} connections",
        ]
        if self.pgbouncer is not None:
            lines.append(
                f"PgBouncer accepts {self.pgbouncer['max_client_conn']} clients (max_client_conn)"
            )
            server_side = self.pgbouncer["default_pool_size"] + self.pgbouncer["reserve_pool_size"]
            lines.append(
                f"PgBouncer opens up to {server_side} (default_pool_size + reserve_pool_size) "
                f"per database/user; server accepts {self.server.describe()}"
            )
        else:
            if self.pgbouncer_unread:
                lines.append(f"PgBouncer's settings could not be read: {self.pgbouncer_unread}")
            lines.append(f"server accepts {self.server.describe()}")
        lines.append("fits" if self.fits else f"DOES NOT FIT ({len(self.problems)} problem(s))")
        return lines


_ADVICE = (
    "Lower DATABASE_POOL_SIZE or DATABASE_MAX_OVERFLOW, build one kind of engine "
    "(DATABASE_ENGINES=async or sync), run fewer workers, or raise the limit."
)


def budget(
    *,
    workers: int,
    pools: dict[str, int],
    server: ServerSlots,
    pgbouncer: dict[str, int] | None = None,
    pgbouncer_unread: str | None = None,
) -> Budget:
    """The budget of ``workers`` processes each opening ``pools`` (kind -> max connections)."""
    per_engine = max(pools.values(), default=0)
    connections = workers * sum(pools.values())
    sizes = " + ".join(str(n) for n in pools.values())
    shape = (
        f"{workers} worker(s) x ({sizes}) connections"
        if len(pools) > 1
        else (f"{workers} worker(s) x {sizes} connections")
    )
    problems: list[str] = []
    if pgbouncer is None:
        if connections > server.available:
            problems.append(
                f"{shape} = {connections} can be open at once, but the server accepts "
                f"{server.describe()}. {_ADVICE}"
            )
    else:
        if connections > pgbouncer["max_client_conn"]:
            problems.append(
                f"{shape} = {connections} client connections, but PgBouncer's "
                f"max_client_conn is {pgbouncer['max_client_conn']}. {_ADVICE}"
            )
        server_side = pgbouncer["default_pool_size"] + pgbouncer["reserve_pool_size"]
        if server_side > server.available:
            problems.append(
                f"PgBouncer may open {server_side} server connections per database/user "
                f"(default_pool_size + reserve_pool_size), but the server accepts "
                f"{server.describe()}. Lower PgBouncer's pool or raise max_connections."
            )
    return Budget(
        workers=workers,
        engines=tuple(pools),
        per_engine=per_engine,
        connections=connections,
        server=server,
        pgbouncer=pgbouncer,
        pgbouncer_unread=pgbouncer_unread,
        problems=tuple(problems),
    )
