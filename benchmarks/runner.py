"""Rounds, groups and batches: how a run is scheduled and what it records.

For every database and concurrency (a *cell*), each round runs every framework's
*group* of contestants (portside, handwritten, inline, floor, advanced-alchemy, the
A/A copy; raw SQLAlchemy is a group of its own) in a freshly shuffled order. A
group's apps are started together (lifespan in), then for each route (shuffled)
each gets an untimed warm-up (fills its pool, prepares statements) and its timed
requests in ``interleave`` sub-batches, A B C, C A B, ..., each order shuffled, from
``concurrency`` asyncio tasks; then the group stops (lifespan out). So the apps a
ratio compares ran moments apart, and PostgreSQL never holds more than one group's
pools. Rows added by ``POST /items`` are deleted after each route, outside timing,
so every batch writes into a table of about 1,000 rows.

Ratios are taken inside a round (contestant / reference, same round), then their
median over rounds is reported: slow drifts of a shared, loaded machine cancel out.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.checks import ROUTES, calls, mixed_calls, problem
from benchmarks.contestant import Contestant, Running
from benchmarks.databases import (
    Backend,
    BenchDatabase,
    PoolConfig,
    postgresql_database,
    sqlite_database,
)
from benchmarks.driver import AsgiClient, Call, echo_app, run_lifespan

_MAX_PROBLEMS = 20


@dataclass
class Config:
    """Everything a run can be told (see ``python -m benchmarks --help``)."""

    rounds: int = 5
    requests: int = 200
    warmup: int | None = None
    #: Sub-batches each timed batch is cut into, interleaved across a group's contestants.
    interleave: int = 3
    concurrencies: tuple[int, ...] = (1, 32)
    databases: tuple[Backend, ...] = ("sqlite", "postgresql")
    contestants: tuple[str, ...] = ()
    routes: tuple[str, ...] = ROUTES
    rss_requests: int = 100_000
    rss_contestants: tuple[str, ...] = (
        "fastapi-portside",
        "litestar-portside",
        "starlette-portside",
    )
    rss_databases: tuple[Backend, ...] = ("sqlite",)
    rss_concurrency: int = 32
    #: Calls per concurrency of the driver-overhead measurement.
    driver_calls: int = 2_000
    pool: PoolConfig = field(default_factory=PoolConfig)
    seed: int = 0
    sqlite_dir: Path | None = None
    postgresql_url: str | None = None
    progress: bool = True

    def warmup_for(self, concurrency: int) -> int:
        """Untimed calls per route before each timed batch."""
        return self.warmup if self.warmup is not None else max(2 * concurrency, 10)


@dataclass
class Batch:
    """One timed batch: its throughput, every call's latency, CPU time per call.

    ``cpu_us`` is this process's CPU time (all threads: event loop, aiosqlite's
    threads) per call; the PostgreSQL server's work is not in it. It moves far less
    than throughput when other processes compete for the cores.
    """

    rps: float
    latencies_ns: list[int]
    cpu_us: float


@dataclass
class _Tally:
    """One contestant's sub-batches of one route in one round, added up."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)

    def add(self, seconds: float, cpu_seconds: float, latencies_ns: list[int]) -> None:
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.latencies_ns += latencies_ns

    def batch(self) -> Batch:
        n = len(self.latencies_ns)
        return Batch(n / self.seconds, self.latencies_ns, self.cpu_seconds / n * 1e6)


@dataclass
class Cell:
    """Everything measured for one database at one concurrency."""

    database: Backend
    concurrency: int
    #: contestant -> route -> one batch per round (round order).
    batches: dict[str, dict[str, list[Batch]]] = field(default_factory=dict)
    #: contestant -> highest checked-out count seen when its group stopped.
    checked_out: dict[str, int | None] = field(default_factory=dict)
    calls: int = 0


@dataclass
class RssResult:
    """Memory over a long run of one contestant."""

    contestant: str
    database: Backend
    requests: int
    baseline_bytes: int
    final_bytes: int
    checked_out: int | None
    seconds: float

    @property
    def growth_bytes(self) -> int:
        """RSS after the last request minus RSS after the first tenth."""
        return self.final_bytes - self.baseline_bytes


@dataclass
class Results:
    """A whole run."""

    config: Config
    contestants: list[str]
    cells: list[Cell] = field(default_factory=list)
    rss: list[RssResult] = field(default_factory=list)
    driver_overhead_us: dict[int, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: contestant -> calls answered wrongly (any database, any phase).
    failures: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    failed_calls: int = 0
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


class Runner:
    """Runs a :class:`Config` and collects :class:`Results`."""

    def __init__(self, config: Config, contestants: Sequence[Contestant]) -> None:
        self.config = config
        self.contestants = list(contestants)
        self.rng = random.Random(config.seed)  # noqa: S311 - shuffling, not secrets
        self.results = Results(config, [c.name for c in self.contestants])

    def log(self, message: str) -> None:
        """Progress on stderr (the report goes to stdout)."""
        if self.config.progress:
            print(message, file=sys.stderr, flush=True)

    # -- batches -------------------------------------------------------------------

    async def drive(
        self, running: Running, batch: list[Call], concurrency: int
    ) -> tuple[float, float, list[int], list[tuple[int, Any]]]:
        """Run ``batch`` from ``concurrency`` tasks.

        Returns wall seconds, CPU seconds, each call's latency and each answer.
        """
        n = len(batch)
        latencies = [0] * n
        answers: list[tuple[int, Any]] = [(0, None)] * n
        indexes = iter(range(n))
        call = running.call
        clock = time.perf_counter_ns

        async def worker() -> None:
            for i in indexes:  # shared: each index is taken by exactly one task
                started = clock()
                try:
                    answers[i] = await call(batch[i])
                except Exception as exc:
                    answers[i] = (-1, f"{type(exc).__name__}: {exc}")
                latencies[i] = clock() - started

        cpu_started = time.process_time_ns()
        started = clock()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
        seconds = (clock() - started) / 1e9
        cpu_seconds = (time.process_time_ns() - cpu_started) / 1e9
        return seconds, cpu_seconds, latencies, answers

    def check(
        self, contestant: str, where: str, batch: list[Call], answers: list[tuple[int, Any]]
    ) -> None:
        """Check every answer; record what is wrong."""
        results = self.results
        results.calls += len(batch)
        results.failures.setdefault(contestant, 0)
        for c, (status, payload) in zip(batch, answers, strict=True):
            wrong = problem(c, status, payload)
            if wrong is not None:
                results.failed_calls += 1
                results.failures[contestant] += 1
                if len(results.problems) < _MAX_PROBLEMS:
                    results.problems.append(f"{contestant} [{where}]: {wrong}")

    # -- cells ---------------------------------------------------------------------

    async def group(
        self, group: list[Contestant], database: BenchDatabase, cell: Cell, admin: AsyncEngine
    ) -> None:
        """One framework's contestants, started together, timed in interleaved batches.

        For each route (shuffled): an untimed warm-up per contestant, then
        ``interleave`` sub-batches per contestant in a fresh shuffled order each time
        (A B C, C A B, ...), so the contestants a ratio compares ran moments apart.
        """
        k = cell.concurrency
        where = f"{cell.database}, c={k}"
        routes = list(self.config.routes)
        self.rng.shuffle(routes)
        parts = max(1, min(self.config.interleave, self.config.requests))
        sizes = [
            self.config.requests // parts + (i < self.config.requests % parts) for i in range(parts)
        ]
        async with AsyncExitStack() as stack:
            running = {c.name: await stack.enter_async_context(c.start(database)) for c in group}
            for route in routes:
                for contestant in group:
                    warm = calls(route, self.config.warmup_for(k), self.rng)
                    _, _, _, answers = await self.drive(running[contestant.name], warm, k)
                    self.check(contestant.name, where, warm, answers)
                tallies = {c.name: _Tally() for c in group}
                gc.collect()
                for size in sizes:
                    order = list(group)
                    self.rng.shuffle(order)
                    for contestant in order:
                        batch = calls(route, size, self.rng)
                        seconds, cpu, latencies, answers = await self.drive(
                            running[contestant.name], batch, k
                        )
                        self.check(contestant.name, where, batch, answers)
                        tallies[contestant.name].add(seconds, cpu, latencies)
                for name, tally in tallies.items():
                    cell.batches.setdefault(name, {}).setdefault(route, []).append(tally.batch())
                    cell.calls += len(tally.latencies_ns)
                if any(c.uses_database for c in group):
                    await database.trim(admin)
            for contestant in group:
                out = running[contestant.name].checked_out()
                previous = cell.checked_out.get(contestant.name)
                if out is None:
                    cell.checked_out.setdefault(contestant.name, None)
                else:
                    cell.checked_out[contestant.name] = max(out, previous or 0)

    def groups(self) -> list[list[Contestant]]:
        """The contestants by framework: the ones a ratio compares run side by side."""
        by_framework: dict[str, list[Contestant]] = {}
        for contestant in self.contestants:
            by_framework.setdefault(contestant.framework, []).append(contestant)
        return list(by_framework.values())

    async def cell(self, database: BenchDatabase, concurrency: int, admin: AsyncEngine) -> Cell:
        """Every round of one database at one concurrency."""
        cell = Cell(database.backend, concurrency)
        for number in range(1, self.config.rounds + 1):
            groups = self.groups()
            self.rng.shuffle(groups)
            _settle_garbage()
            started = time.perf_counter()
            for group in groups:
                await self.group(group, database, cell, admin)
            self.log(
                f"  {database.backend} c={concurrency} round {number}/{self.config.rounds}: "
                f"{time.perf_counter() - started:.1f}s, load {os.getloadavg()[0]:.2f}"
            )
        return cell

    # -- memory ----------------------------------------------------------------------

    async def rss(
        self, contestant: Contestant, database: BenchDatabase, admin: AsyncEngine
    ) -> RssResult:
        """RSS growth of one contestant over ``rss_requests`` mixed calls."""
        gc.unfreeze()  # nothing hidden from the collector while memory is measured
        total = self.config.rss_requests
        chunks = 10
        size = max(total // chunks, 1)
        k = self.config.rss_concurrency
        where = f"{database.backend}, rss"
        baseline = final = 0
        started = time.perf_counter()
        async with contestant.start(database) as running:
            done = 0
            for index in range(chunks):
                batch = mixed_calls(min(size, total - done), self.rng)
                if not batch:
                    break
                _, _, _, answers = await self.drive(running, batch, k)
                self.check(contestant.name, where, batch, answers)
                done += len(batch)
                del answers
                await database.trim(admin)
                if index == 0:
                    gc.collect()
                    baseline = rss_bytes()
            gc.collect()
            final = rss_bytes()
            out = running.checked_out()
        seconds = time.perf_counter() - started
        self.log(
            f"  rss {contestant.name} {database.backend}: {done} calls in {seconds:.1f}s, "
            f"{(final - baseline) / 1e6:+.2f} MB"
        )
        return RssResult(contestant.name, database.backend, done, baseline, final, out, seconds)

    # -- the whole run -------------------------------------------------------------

    async def driver_overhead(self) -> None:
        """Microseconds the driver itself spends per call (an app that does nothing)."""
        async with run_lifespan(echo_app) as state:
            client = AsgiClient(echo_app, state)
            for k in sorted(set(self.config.concurrencies)):
                batch = calls("list", self.config.driver_calls, self.rng)
                await self.drive(client, batch, k)  # type: ignore[arg-type]
                seconds, _, _, _ = await self.drive(client, batch, k)  # type: ignore[arg-type]
                self.results.driver_overhead_us[k] = seconds / len(batch) * 1e6

    def databases(self) -> list[tuple[BenchDatabase, Callable[[], None]]]:
        """The selected databases, each with its cleanup."""
        selected: list[tuple[BenchDatabase, Callable[[], None]]] = []
        wanted = set(self.config.databases) | (
            set(self.config.rss_databases) if self.config.rss_requests else set()
        )
        for backend in ("sqlite", "postgresql"):
            if backend not in wanted:
                continue
            if backend == "sqlite":
                db, folder = sqlite_database(self.config.sqlite_dir, self.config.pool)
                owned = self.config.sqlite_dir is None
                selected.append((db, functools.partial(_remove, folder, owned)))
            else:
                db = postgresql_database(self.config.postgresql_url, self.config.pool)
                selected.append((db, lambda: None))
        return selected

    async def database(self, database: BenchDatabase) -> None:
        """Seed ``database``, run its cells and memory runs, drop the table."""
        config = self.config
        by_name = {c.name: c for c in self.contestants}
        await database.seed()
        for contestant in self.contestants:
            contestant.prepare(database)
        admin = database.create_engine()
        try:
            if database.backend in config.databases:
                for k in config.concurrencies:
                    self.log(f"{database.backend}, concurrency {k}")
                    self.results.cells.append(await self.cell(database, k, admin))
            if config.rss_requests and database.backend in config.rss_databases:
                for name in config.rss_contestants:
                    if name in by_name:
                        self.results.rss.append(await self.rss(by_name[name], database, admin))
        finally:
            await admin.dispose()
        await database.drop()

    async def run(self) -> Results:
        """Run everything the config selects."""
        results = self.results
        results.load_before = os.getloadavg()
        started = time.perf_counter()
        # Every group of every round starts and stops apps: their logs would drown the progress.
        portside_logger = logging.getLogger("portside")
        level = portside_logger.level
        portside_logger.setLevel(logging.WARNING)
        try:
            await self.driver_overhead()
            for database, cleanup in self.databases():
                try:
                    await self.database(database)
                finally:
                    cleanup()
        finally:
            gc.unfreeze()  # leave the process's collector as it was
            portside_logger.setLevel(level)
        results.seconds = time.perf_counter() - started
        results.load_after = os.getloadavg()
        return results


def _settle_garbage() -> None:
    """Collect everything, then exempt the survivors from later collections.

    A full collection takes ~0.1 s with three web frameworks loaded; done before
    every timed batch it would dominate the run. Frozen once per round, the
    ``gc.collect()`` before each batch only scans what the round itself created,
    so no contestant pays for another's garbage and collections stay cheap.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _remove(folder: Path, owned: bool) -> None:
    for name in ("bench.db", "bench.db-wal", "bench.db-shm"):
        (folder / name).unlink(missing_ok=True)
    if owned:
        folder.rmdir()
