"""Read replicas: which streaming replica a read-only unit of work reads from.

A database configured with ``replica_urls`` gets a :class:`ReplicaSet`: one
:class:`~portside.Database` (own engines, own pools) per replica, each in or out of
rotation. A replica leaves the rotation when it fails a check or a query with a
connection error, or trails the primary by more than ``replica_max_lag`` seconds;
the lifecycle checks every replica each ``replica_check_interval`` seconds and
puts it back once it answers and has caught up.

Read-your-writes: a unit that wrote records the primary's WAL position after its
commit (:func:`commit_position`), the web middleware hands it to the client as a
consistency token, and a later read carrying it is routed (:meth:`ReplicaSet.choose`)
only to a replica whose replay position (``pg_last_wal_replay_lsn()``) has passed
it, waiting up to ``replica_wait`` seconds, else to the primary.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from sqlalchemy import event

from portside.adapters.postgresql import serve_as_replica
from portside.errors import ConfigurationError, ReplicaWriteError, StartupError
from portside.failures import Kind, classify

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import ExceptionContext

    from portside.database import Database

__all__ = ["Replica", "ReplicaSet", "ReplicaState", "ReplicaStatus", "format_lsn", "parse_lsn"]

logger = logging.getLogger("portside")

_READ_ONLY_SQLSTATE = "25006"
#: What a replica reports about itself in one round trip.
_REPLICA_QUERY = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
_REPLAY_QUERY = "SELECT pg_last_wal_replay_lsn()::text"
#: The insert position, not pg_current_wal_lsn(): a commit that wrote nothing else
#: is not flushed at once (an asynchronous commit), so only this one includes it.
PRIMARY_POSITION_QUERY = "SELECT pg_current_wal_insert_lsn()::text"
#: Most primary positions remembered for measuring lag.
_MAX_HISTORY = 1000
#: Pause between two looks at a replica's replay position while a token waits.
_POLL_INTERVAL = 0.01


def parse_lsn(text: str) -> int:
    """PostgreSQL's ``X/Y`` WAL position as one integer; ``ValueError`` if malformed."""
    high, slash, low = text.partition("/")
    if not slash or not (0 < len(high) <= 8 and 0 < len(low) <= 8):
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """``position`` as PostgreSQL writes it (``X/Y``)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class ReplicaState(enum.Enum):
    """Whether a replica takes reads."""

    IN_ROTATION = "in rotation"
    LAGGING = "lagging"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica, as ``ping()``, the readiness route and ``portside check`` show it."""

    url: str
    state: ReplicaState
    #: Seconds behind the primary at the last check (``None`` when unknown).
    lag: float | None
    #: Why it is out of rotation, in one line without secrets (``None`` when in rotation).
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "url": self.url,
            "state": self.state.value,
            "lag_s": None if self.lag is None else round(self.lag, 3),
            "error": self.error,
        }


class Replica:
    """One streaming replica: its own engines, and whether it takes reads now."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.state = ReplicaState.DOWN
        self.lag: float | None = None
        self.error: str | None = "not checked yet"
        #: The highest replay position seen (an integer LSN), for free token checks.
        self.replay: int | None = None
        #: Connection failures seen in queries; a unit compares it to retry on the primary.
        self.failures = 0

    @property
    def in_rotation(self) -> bool:
        """Whether reads may be routed here."""
        return self.state is ReplicaState.IN_ROTATION

    def engine(self, kind: str) -> Engine:
        """The sync core of this replica's ``"sync"`` or ``"async"`` engine."""
        if kind == "async":
            return self.database.async_engine.sync_engine
        return self.database.engine

    def status(self) -> ReplicaStatus:
        """Its state as of the last check or failure."""
        return ReplicaStatus(self.database.masked_url, self.state, self.lag, self.error)

    def fail(self, reason: str) -> None:
        """Take it out of rotation until a check finds it healthy again."""
        if self.state is not ReplicaState.DOWN:
            logger.warning("replica %s taken out of rotation: %s", self.database.masked_url, reason)
        self.state = ReplicaState.DOWN
        self.error = reason

    def observe(self, position: int) -> None:
        """Remember a replay position read from it (positions only grow)."""
        if self.replay is None or position > self.replay:
            self.replay = position

    def install_listeners(self) -> None:
        """Make its engines report failures here and refuse writes with a clear error."""
        for kind in self.database.kinds:
            engine = self.engine(kind)
            serve_as_replica(engine)
            event.listen(engine, "handle_error", self._on_error)

    def _on_error(self, context: ExceptionContext) -> None:
        original = context.original_exception
        if getattr(original, "sqlstate", None) == _READ_ONLY_SQLSTATE:
            raise ReplicaWriteError(ReplicaWriteError.MESSAGE) from context.sqlalchemy_exception
        failure = context.sqlalchemy_exception or original
        if context.is_disconnect:
            self.failures += 1
            self.fail(classify(failure).cause)
        else:
            self.connection_failed(failure)

    def connection_failed(self, exc: BaseException) -> None:
        """Take it out of rotation if ``exc`` says it cannot serve (not for a bug)."""
        failure = classify(exc)
        if failure.kind is Kind.UNAVAILABLE:
            self.failures += 1
            self.fail(failure.cause)

    # -- checks ------------------------------------------------------------------------

    async def _query(self, sql: str) -> tuple[Any, ...] | None:
        database = self.database
        if "async" in database.kinds:
            async with database.async_engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                row = (await connection.exec_driver_sql(sql)).first()
        else:
            engine = database.engine

            def run() -> Any:
                with engine.connect() as connection:
                    connection.execution_options(isolation_level="AUTOCOMMIT")
                    return connection.exec_driver_sql(sql).first()

            row = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        return None if row is None else tuple(row)

    async def check(self, history: Sequence[tuple[float, int]], max_lag: float) -> None:
        """Ask the replica how far it has replayed; set its state (never raises).

        ``history`` holds the primary's WAL position at each recent check (monotonic
        time, position), oldest first. The lag is how long ago the primary was at the
        first position the replica has not replayed yet: unlike the age of the last
        replayed commit, it stays 0 while the primary is idle.
        """
        timeout = self.database.settings.connect_timeout
        row: tuple[Any, ...] | None = None
        error = f"no answer within {timeout:g}s"
        with anyio.move_on_after(timeout):
            try:
                row = await self._query(_REPLICA_QUERY)
                error = ""
            except Exception as exc:
                error = self.database.redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
        if row is None:
            self.lag = None
            self.fail(error or "no answer")
            return
        in_recovery, replay_text = row
        if not in_recovery:
            self.fail("not a standby (pg_is_in_recovery() is false); check the replica URL")
            return
        replay = parse_lsn(replay_text) if replay_text else 0
        self.observe(replay)
        behind = next((at for at, position in history if position > replay), None)
        self.lag = 0.0 if behind is None else max(0.0, time.monotonic() - behind)
        if self.lag > max_lag:
            if self.state is ReplicaState.IN_ROTATION:
                logger.warning(
                    "replica %s taken out of rotation: %.1fs behind the primary "
                    "(DATABASE_REPLICA_MAX_LAG is %gs)",
                    self.database.masked_url,
                    self.lag,
                    max_lag,
                )
            self.state = ReplicaState.LAGGING
            self.error = f"{self.lag:.1f}s behind the primary (limit {max_lag:g}s)"
            return
        if self.state is not ReplicaState.IN_ROTATION:
            logger.info("replica %s in rotation", self.database.masked_url)
        self.state = ReplicaState.IN_ROTATION
        self.error = None

    def replay_position_blocking(self, kind: str) -> int | None:
        """The replay position, read now on the ``kind`` engine (worker thread or greenlet)."""
        with self.engine(kind).connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            value = connection.exec_driver_sql(_REPLAY_QUERY).scalar()
        return None if value is None else parse_lsn(str(value))


class ReplicaSet:
    """The replicas of one database and the routing of its read-only units."""

    def __init__(self, primary: Database, replicas: tuple[Replica, ...]) -> None:
        self.primary = primary
        self.replicas = replicas
        settings = primary.settings
        #: Whether read-only units are routed here (``DATABASE_REPLICA_ROUTING``).
        self.routing = settings.replica_routing
        self.max_lag = settings.replica_max_lag
        self.wait = settings.replica_wait
        self.interval = settings.replica_check_interval
        self._turn = itertools.count()
        #: The primary's WAL position at each recent check: (monotonic time, position).
        self._history: deque[tuple[float, int]] = deque()

    @classmethod
    def for_database(cls, primary: Database) -> ReplicaSet | None:
        """The replica set ``primary``'s settings ask for, not started (``None``: none)."""
        from portside.database import Database  # noqa: PLC0415 - it imports this module

        settings = primary.settings.replica_settings()
        if not settings:
            return None
        replicas = tuple(
            Replica(Database(f"{primary.name}/replica{i}", s)) for i, s in enumerate(settings, 1)
        )
        return cls(primary, replicas)

    async def start(self) -> None:
        """Build every replica's engines and check each once; one that is down stays out."""
        for replica in self.replicas:
            try:
                replica.database.build(None)
            except ConfigurationError as exc:
                raise StartupError(
                    f"Replica of database {self.primary.name!r} "
                    f"({replica.database.masked_url}): {exc}"
                ) from None
            replica.install_listeners()
        await self.check()
        for replica in self.replicas:
            if not replica.in_rotation:
                logger.warning(
                    "replica %s of database %r is out of rotation at startup: %s",
                    replica.database.masked_url,
                    self.primary.name,
                    replica.error,
                )

    async def check(self) -> None:
        """Check every replica against the primary's recent WAL positions."""
        with anyio.move_on_after(self.primary.settings.connect_timeout):
            try:
                text = await self.primary.scalar(PRIMARY_POSITION_QUERY)
            except Exception:  # the primary's own health is ping()'s to report
                text = None
            if text is not None:
                now = time.monotonic()
                position = parse_lsn(str(text))
                # A position is kept with the time it was first seen, so an idle
                # primary's last position keeps its age: a replica that stopped
                # replaying before it goes on lagging, it does not rejoin.
                if not self._history or self._history[-1][1] != position:
                    self._history.append((now, position))
                # Older positions only matter to tell "too far behind" apart; the
                # newest one at or before the cutoff stays, as that lower bound.
                cutoff = now - (self.max_lag + 2 * self.interval)
                while len(self._history) > 1 and (
                    len(self._history) > _MAX_HISTORY or self._history[1][0] <= cutoff
                ):
                    self._history.popleft()
        for replica in self.replicas:
            await replica.check(self._history, self.max_lag)

    async def monitor(self) -> None:
        """Check the replicas every ``replica_check_interval`` seconds, forever."""
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a monitor that dies would freeze the rotation
                logger.exception("checking the replicas of %r failed", self.primary.name)

    def statuses(self) -> tuple[ReplicaStatus, ...]:
        """Every replica's state as of its last check."""
        return tuple(replica.status() for replica in self.replicas)

    def choose(
        self,
        position: int | None,
        fetch: Callable[[Replica], int | None],
        sleep: Callable[[float], object],
    ) -> Replica | None:
        """The replica a read-only unit reads from, or ``None`` for the primary.

        Without a ``position`` (no token): the next replica in rotation, no I/O.
        With one: a replica known to have replayed past it; else ``fetch`` each
        replica's replay position, again every few milliseconds for up to
        ``replica_wait`` seconds. ``fetch`` and ``sleep`` block: they run in a
        worker thread or in SQLAlchemy's greenlet.
        """
        candidates = [replica for replica in self.replicas if replica.in_rotation]
        if not candidates:
            return None
        start = next(self._turn) % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        if position is None:
            return ordered[0]
        for replica in ordered:
            if replica.replay is not None and replica.replay >= position:
                return replica
        deadline = time.monotonic() + self.wait
        while True:
            for replica in ordered:
                if not replica.in_rotation:
                    continue
                try:
                    replay = fetch(replica)
                except Exception as exc:
                    replica.fail(replica.database.redact(f"{type(exc).__name__}"))
                    continue
                if replay is not None:
                    replica.observe(replay)
                    if replay >= position:
                        return replica
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sleep(min(_POLL_INTERVAL, remaining))

    async def dispose(self) -> list[str]:
        """Dispose every replica's engines; one line per failure."""
        errors: list[str] = []
        for replica in self.replicas:
            errors += await replica.database.dispose()
        return errors
