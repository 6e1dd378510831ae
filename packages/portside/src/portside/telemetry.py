"""OpenTelemetry metrics and traces for pools and units of work (``portside[otel]``).

Imported only when a database has ``telemetry=True`` (``DATABASE_TELEMETRY=true``):
with it off, portside imports no OpenTelemetry and registers no listener. With it
on, it reports to the process's global meter and tracer providers (whatever the app
configured with the OpenTelemetry SDK; nothing is exported until it does):

* per pool (attribute ``db.client.connection.pool.name`` = ``"<database>.<sync|async>"``
  and ``db.system.name``; never a URL): the semantic-convention metrics
  ``db.client.connection.count`` (``db.client.connection.state`` = idle | used),
  ``.max``, ``.idle.max``, ``.pending_requests``, ``.wait_time``, ``.use_time``,
  ``.timeouts`` and ``.create_time``, from SQLAlchemy's pool events;
* per unit of work: the counters in :data:`METRICS` (commits, rollbacks, error
  responses portside substituted, held connections) and one span, ``portside unit of
  work``, child of whatever span is current when the unit opens its first session (the
  framework's request span; a request that no recording span traces gets none), with
  a child span for each checkout that waited 1 ms or more (or failed), so a trace
  shows the wait for a connection apart from the statements. portside makes no span
  per statement: ``opentelemetry-instrumentation-sqlalchemy`` does that, alongside;
* held connections: a checked-out connection left unused between two statements (or
  between its last statement and its return) for longer than
  ``DATABASE_HELD_CONNECTION_THRESHOLD`` is reported once per checkout: one warning
  with the route and the ``portside.connection.held`` counter. No SQL, no parameters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import event
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool

from portside import asgi
from portside.adapters import failed_statements
from portside.retries import RetryReason
from portside.sessions import AsyncSession, Session
from portside.unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.pool import Pool

    from portside.settings import DatabaseSettings

__all__ = ["METRICS", "TracedUnitOfWork", "instrument_engine"]

logger = logging.getLogger("portside")

#: Every metric portside records, with what it counts.
METRICS: Mapping[str, str] = {
    "db.client.connection.count": "connections by state (idle, used) per pool",
    "db.client.connection.max": "most connections the pool may open (size + overflow)",
    "db.client.connection.idle.max": "most idle connections the pool keeps (its size)",
    "db.client.connection.pending_requests": "checkouts waiting for a connection",
    "db.client.connection.wait_time": "seconds a checkout waited for its connection",
    "db.client.connection.use_time": "seconds a connection stayed checked out",
    "db.client.connection.timeouts": "checkouts that gave up after DATABASE_POOL_TIMEOUT",
    "db.client.connection.create_time": "seconds opening a new connection took",
    "portside.unit_of_work.commits": "units of work committed, per database",
    "portside.unit_of_work.rollbacks": "units of work rolled back, per database",
    "portside.unit_of_work.retries": "units of work run again, per database and reason",
    "portside.error_responses": "responses portside substituted, by HTTP status",
    "portside.connection.held": "checkouts held unused past the threshold, per route",
}

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
SYSTEM = "db.system.name"
DATABASE = "portside.database"
OUTCOME = "portside.unit_of_work.outcome"
ROUTE = "http.route"
RETRY_REASON = "portside.retry.reason"
STATUS = "http.response.status_code"
UNIT_SPAN = "portside unit of work"

#: Checkouts that waited this long (seconds) or failed get a span of their own.
_TRACED_WAIT = 0.001
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Keys in a pool entry's ``info`` (kept across checkouts, so each is reset at checkout).
_CREATING = "portside.creating"
_OUT_SINCE = "portside.out_since"
_LAST_STATEMENT = "portside.last_statement"
_UNIT = "portside.unit"
_HELD_REPORTED = "portside.held_reported"

#: The unit of work whose session is asking for a connection in this context.
_current_unit: ContextVar[TracedUnitOfWork | None] = ContextVar("portside_unit", default=None)


@dataclass(eq=False)
class _Pool:
    """One instrumented engine's pool, the attributes its metrics carry, its tallies.

    Gauges are tallied here and observed when the SDK collects, so a checkout costs
    no SDK call; under a lock for sync engines, whose checkouts run in worker threads
    (an async engine's all run on the event loop's thread).
    """

    engine: Engine
    attributes: dict[str, str]
    threshold: float
    database: str
    used: int = 0  # for pools without checkedout() (SQLite's static and null pools)
    pending: int = 0
    lock: threading.Lock | None = None

    def tally(self, *, used: int = 0, pending: int = 0) -> None:
        if self.lock is None:
            self.used += used
            self.pending += pending
            return
        with self.lock:
            self.used += used
            self.pending += pending


class _Instruments:
    """The process's portside instruments, made once from the global providers."""

    def __init__(self) -> None:
        meter = metrics.get_meter("portside", version("portside"))
        self.tracer = trace.get_tracer("portside", version("portside"))
        self.pools: set[_Pool] = set()
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._count],
            unit="{connection}",
            description=METRICS["db.client.connection.count"],
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            [self._max],
            unit="{connection}",
            description=METRICS["db.client.connection.max"],
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            [self._idle_max],
            unit="{connection}",
            description=METRICS["db.client.connection.idle.max"],
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._pending],
            unit="{request}",
            description=METRICS["db.client.connection.pending_requests"],
        )
        self.wait_time, self.use_time, self.create_time = (
            meter.create_histogram(
                name,
                unit="s",
                description=METRICS[name],
                explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
            )
            for name in (
                "db.client.connection.wait_time",
                "db.client.connection.use_time",
                "db.client.connection.create_time",
            )
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description=METRICS["db.client.connection.timeouts"],
        )
        # Units of work are tallied here and observed at collection (a cumulative
        # sum either way), so ending a unit costs no SDK call.
        self.outcomes: dict[tuple[str, bool], int] = {}
        self.outcomes_lock = threading.Lock()
        for name, committed in (
            ("portside.unit_of_work.commits", True),
            ("portside.unit_of_work.rollbacks", False),
        ):
            meter.create_observable_counter(
                name, [self._outcomes(committed)], unit="{unit}", description=METRICS[name]
            )
        self.retries = meter.create_counter(
            "portside.unit_of_work.retries",
            unit="{unit}",
            description=METRICS["portside.unit_of_work.retries"],
        )
        self.error_responses = meter.create_counter(
            "portside.error_responses",
            unit="{response}",
            description=METRICS["portside.error_responses"],
        )
        self.held = meter.create_counter(
            "portside.connection.held",
            unit="{checkout}",
            description=METRICS["portside.connection.held"],
        )

    def _count(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool in list(self.pools):
            queue = pool.engine.pool
            if isinstance(queue, QueuePool):
                used, idle = queue.checkedout(), queue.checkedin()
                yield Observation(idle, {**pool.attributes, STATE: "idle"})
            else:
                used = pool.used
            yield Observation(used, {**pool.attributes, STATE: "used"})

    def _pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool in list(self.pools):
            yield Observation(pool.pending, pool.attributes)

    def _outcomes(self, committed: bool) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self.outcomes_lock:
                tallies = list(self.outcomes.items())
            for (database, outcome), count in tallies:
                if outcome is committed:
                    yield Observation(count, {DATABASE: database})

        return observe

    def count_outcome(self, databases: tuple[str, ...], *, committed: bool) -> None:
        with self.outcomes_lock:
            for database in databases:
                key = (database, committed)
                self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def _max(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool in list(self.pools):
            queue = pool.engine.pool
            if isinstance(queue, QueuePool) and queue._max_overflow >= 0:
                yield Observation(queue.size() + queue._max_overflow, pool.attributes)

    def _idle_max(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool in list(self.pools):
            queue = pool.engine.pool
            if isinstance(queue, QueuePool):
                yield Observation(queue.size(), pool.attributes)


_instruments: _Instruments | None = None


def _get_instruments() -> _Instruments:
    global _instruments  # noqa: PLW0603 - one set of instruments per process
    if _instruments is None:
        _instruments = _Instruments()
        asgi.error_reply_observers.append(_count_error_reply)
    return _instruments


def _count_error_reply(status: int) -> None:
    _get_instruments().error_responses.add(1, {STATUS: status})


def route_of(scope: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """``(template, path)`` of a request: the route template when the framework set one."""
    if scope is None:
        return None, None
    template = getattr(scope.get("route"), "path", None)  # Starlette, FastAPI
    if not isinstance(template, str):
        template = scope.get("path_template")  # Litestar
    path = scope.get("path")
    return (template if isinstance(template, str) else None), (
        path if isinstance(path, str) else None
    )


def _listen_first_to_connect(engine: Engine, listener: Callable[..., None]) -> None:
    """Make ``listener`` the first ``do_connect`` listener of ``engine``.

    One that opens the connection itself (the PostgreSQL adapters' bounded connects)
    ends the chain, and SQLAlchemy ignores ``insert=True`` for dialect events, so the
    others are listened again after it.
    """
    others = list(engine.dialect.dispatch.do_connect)
    for other in others:
        event.remove(engine, "do_connect", other)
    event.listen(engine, "do_connect", listener)
    for other in others:
        event.listen(engine, "do_connect", other)


def instrument_engine(
    engine: Engine, *, database: str, kind: str, settings: DatabaseSettings
) -> Callable[[], None]:
    """Record the metrics of ``engine``'s pool and watch for held connections.

    Returns the function that stops reporting the pool (call it at disposal).
    """
    ins = _get_instruments()
    pool = _Pool(
        engine,
        {POOL_NAME: f"{database}.{kind}", SYSTEM: engine.dialect.name},
        settings.held_connection_threshold,
        database=database,
        lock=threading.Lock() if kind == "sync" else None,
    )
    # A queue pool counts its checked-out connections itself.
    count_used = not isinstance(engine.pool, QueuePool)
    attributes = pool.attributes
    threshold = pool.threshold
    perf_counter = time.perf_counter

    def do_connect(_dialect: Any, record: Any, _cargs: Any, _cparams: Any) -> None:
        record.info[_CREATING] = perf_counter()

    def on_connect(_dbapi_connection: Any, record: Any) -> None:
        started = record.info.pop(_CREATING, None)
        if started is not None:
            ins.create_time.record(perf_counter() - started, attributes)

    def on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        info = record.info
        info[_OUT_SINCE] = perf_counter()
        info[_LAST_STATEMENT] = None
        unit = _current_unit.get()
        # Only a unit's checkout is watched for holding: a test kit's connection, say,
        # stays checked out across many units, idle between them by design.
        info[_UNIT] = unit if unit is not None and not unit.ended else None
        info[_HELD_REPORTED] = unit is None or unit.ended
        if count_used:
            pool.tally(used=1)

    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        info = record.info
        out_since = info.pop(_OUT_SINCE, None)
        if out_since is None:
            return
        if count_used:
            pool.tally(used=-1)
        now = perf_counter()
        ins.use_time.record(now - out_since, attributes)
        last = info.pop(_LAST_STATEMENT, None)
        if last is not None and now - last > threshold:
            _report_held(ins, pool, info, now - last, "before it was returned")
        info[_UNIT] = None
        info[_HELD_REPORTED] = True

    class WatchedConnection(engine._connection_cls):  # type: ignore[name-defined,misc]
        """Notes when each statement ends, and reports a gap since the last one.

        Not the engine's ``before/after_cursor_execute`` events: a connection-level
        listener makes every new ``Connection`` join the engine's event dispatch (see
        :mod:`portside.adapters.failed_statements`), which cost more than the watch.
        """

        def _execute_context(self, *args: Any, **kw: Any) -> Any:
            info = self.info
            last = info.get(_LAST_STATEMENT)
            if last is not None and (gap := perf_counter() - last) > threshold:
                _report_held(ins, pool, info, gap, "before its next statement")
            try:
                return super()._execute_context(*args, **kw)
            finally:
                info[_LAST_STATEMENT] = perf_counter()

    _listen_first_to_connect(engine, do_connect)
    event.listen(engine.pool, "connect", on_connect)
    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine.pool, "checkin", on_checkin)
    failed_statements.hand_out(engine, WatchedConnection)
    _time_checkouts(engine.pool, ins, pool)
    ins.pools.add(pool)
    return lambda: ins.pools.discard(pool)


def _time_checkouts(target: Pool, ins: _Instruments, pool: _Pool) -> None:
    """Wrap the pool's ``connect``: SQLAlchemy has no event before a checkout or on its timeout."""
    connect = target.connect
    perf_counter = time.perf_counter
    attributes = pool.attributes

    def timed_connect() -> Any:
        pool.tally(pending=1)
        started = perf_counter()
        failed: BaseException | None = None
        try:
            return connect()
        except BaseException as exc:
            failed = exc
            if isinstance(exc, PoolTimeoutError):
                ins.timeouts.add(1, attributes)
            raise
        finally:
            waited = perf_counter() - started
            pool.tally(pending=-1)
            if failed is None:
                ins.wait_time.record(waited, attributes)
            # A span only for a wait worth seeing: the histogram has every one.
            if waited >= _TRACED_WAIT or failed is not None:
                unit = _current_unit.get()
                if unit is not None and unit.span is not None and unit.span.is_recording():
                    _checkout_span(ins, unit.span, attributes, waited, failed)

    target.connect = timed_connect  # type: ignore[method-assign]


def _checkout_span(
    ins: _Instruments,
    parent: trace.Span,
    attributes: dict[str, str],
    waited: float,
    failed: BaseException | None,
) -> None:
    end = time.time_ns()
    span = ins.tracer.start_span(
        "portside checkout",
        context=trace.set_span_in_context(parent),
        attributes=attributes,
        start_time=end - int(waited * 1e9),
    )
    if failed is not None:
        span.set_status(trace.StatusCode.ERROR, type(failed).__name__)
    span.end(end_time=end)


def _report_held(
    ins: _Instruments, pool: _Pool, info: dict[str, Any], gap: float, when: str
) -> None:
    if info.get(_HELD_REPORTED, True):
        return  # once per checkout (and never for a connection not checked out)
    info[_HELD_REPORTED] = True
    unit: TracedUnitOfWork | None = info.get(_UNIT)
    template, path = route_of(unit.request if unit else None)
    method = (unit.request or {}).get("method") if unit else None
    where = (
        f"{method} {template or path}" if (template or path) else "a unit of work outside a request"
    )
    logger.warning(
        "database %r: a connection (pool %s) sat unused for %.2fs %s while %s kept it "
        "checked out, its transaction open (threshold %gs, "
        "DATABASE_HELD_CONNECTION_THRESHOLD). Await slow work (HTTP calls, sleeps) before "
        "or after the database work, or in a unit of work of its own.",
        pool.database,
        pool.attributes[POOL_NAME],
        gap,
        when,
        where,
        pool.threshold,
    )
    ins.held.add(1, {**pool.attributes, ROUTE: template} if template else pool.attributes)
    if unit is not None and unit.span is not None:
        unit.span.add_event("connection held", {"portside.held_seconds": gap})


class TracedUnitOfWork(UnitOfWork):
    """A :class:`~portside.UnitOfWork` that records its span and outcome counters.

    The lifecycle hands these out instead of plain units when telemetry is on, so a
    lifecycle without telemetry runs no telemetry code at all.
    """

    span: trace.Span | None = None
    _span_decided = False

    def _began(self) -> None:
        if not self._span_decided:
            self._span_decided = True
            # A request's unit joins its request's trace, and only a traced (recording)
            # request's: an untraced request costs no span. Other units (jobs,
            # scripts) always get one.
            if self.request is None or trace.get_current_span().is_recording():
                # The route is known here: frameworks route before the handler runs.
                template, _path = route_of(self.request)
                self.span = _get_instruments().tracer.start_span(
                    UNIT_SPAN, attributes={ROUTE: template} if template else None
                )
        _current_unit.set(self)

    async def async_session(self, name: str | None = None) -> AsyncSession:
        """See :meth:`UnitOfWork.async_session`; starts the unit's span."""
        session = await super().async_session(name)
        self._began()
        return session

    async def session(self, name: str | None = None) -> Session:
        """See :meth:`UnitOfWork.session`; starts the unit's span."""
        session = await super().session(name)
        self._began()
        return session

    def session_blocking(self, name: str | None = None) -> Session:
        """See :meth:`UnitOfWork.session_blocking`; starts the unit's span."""
        session = super().session_blocking(name)
        self._began()
        return session

    async def finish(self, *, commit: bool, run_hooks: bool = True) -> None:
        """See :meth:`UnitOfWork.finish`; records the outcome and ends the span."""
        if self.ended:
            return
        databases = self.database_names
        try:
            await super().finish(commit=commit, run_hooks=run_hooks)
        except BaseException as exc:
            self._record(databases, committed=False, error=exc)
            raise
        self._record(databases, committed=commit, error=None)

    def finish_blocking(self, *, commit: bool) -> None:
        """See :meth:`UnitOfWork.finish_blocking`; records the outcome and ends the span."""
        if self.ended:
            return
        databases = self.database_names
        try:
            super().finish_blocking(commit=commit)
        except BaseException as exc:
            self._record(databases, committed=False, error=exc)
            raise
        self._record(databases, committed=commit, error=None)

    def retried(self, reason: RetryReason) -> None:
        """See :meth:`UnitOfWork.retried`; counts the retry per database and reason."""
        retries = _get_instruments().retries
        for database in self.database_names:
            retries.add(1, {DATABASE: database, RETRY_REASON: reason})

    def _record(
        self, databases: tuple[str, ...], *, committed: bool, error: BaseException | None
    ) -> None:
        if _current_unit.get() is self:
            _current_unit.set(None)
        if not databases:
            return
        _get_instruments().count_outcome(databases, committed=committed)
        span = self.span
        if span is None:
            return
        span.set_attribute(OUTCOME, "commit" if committed else "rollback")
        if error is not None:
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        span.end()
