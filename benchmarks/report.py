"""Turn :class:`~benchmarks.runner.Results` into Markdown tables and a JSON summary.

Throughput is reported per route as the median over rounds with the range;
latencies are percentiles of every timed call of all rounds; a ratio is computed
inside each round (same round, same conditions) and its median over rounds is the
number a target is judged by.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from benchmarks.checks import ROUTE_LABELS
from benchmarks.contestants import AA_COPY, AA_REFERENCE, PRE_PING
from benchmarks.runner import Cell, Results


@dataclass(frozen=True)
class Comparison:
    """``contestant`` / ``reference`` throughput, optionally with a target minimum."""

    contestant: str
    reference: str
    minimum: float | None = None

    @property
    def label(self) -> str:
        """How the report names it."""
        return f"{self.contestant} / {self.reference}"


#: The issue's targets, then the informative pairs (no minimum).
COMPARISONS = (
    Comparison("fastapi-portside", "fastapi-handwritten", 1.00),
    Comparison("litestar-portside", "litestar-handwritten", 1.00),
    Comparison("starlette-portside", "starlette-handwritten", 1.00),
    Comparison("fastapi-portside", "fastapi-inline", 0.95),
    Comparison("litestar-portside", "litestar-inline", 0.95),
    Comparison("starlette-portside", "starlette-inline", 0.95),
    Comparison("fastapi-portside", "fastapi-advanced-alchemy", 1.20),
    Comparison("litestar-portside", "litestar-advanced-alchemy"),
    Comparison(AA_COPY, AA_REFERENCE),
    Comparison("fastapi-portside", PRE_PING),
    Comparison(PRE_PING, AA_REFERENCE),
    # Telemetry's cost (run only when named: --contestants 'starlette-portside*').
    Comparison("starlette-portside-otel", "starlette-portside", 0.95),
    Comparison("litestar-portside-otel", "litestar-portside", 0.95),
)
#: RSS growth allowed over the long run.
RSS_LIMIT_BYTES = 5_000_000

PACKAGES = (
    "sqlalchemy",
    "sqlmodel",
    "pydantic",
    "fastapi",
    "starlette",
    "litestar",
    "advanced-alchemy",
    "aiosqlite",
    "asyncpg",
    "psycopg",
)


def versions() -> dict[str, str]:
    """Python and the versions of every package that shapes the numbers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def ratios(cell: Cell, contestant: str, reference: str, route: str) -> list[float]:
    """Per-round throughput ratios ``contestant / reference`` for ``route``."""
    mine = cell.batches.get(contestant, {}).get(route, [])
    theirs = cell.batches.get(reference, {}).get(route, [])
    return [a.rps / b.rps for a, b in zip(mine, theirs, strict=False)]


def cpu_ratios(cell: Cell, contestant: str, reference: str, route: str) -> list[float]:
    """Per-round ``reference / contestant`` CPU per call (> 1: the contestant is cheaper)."""
    mine = cell.batches.get(contestant, {}).get(route, [])
    theirs = cell.batches.get(reference, {}).get(route, [])
    return [b.cpu_us / a.cpu_us for a, b in zip(mine, theirs, strict=False)]


def reference_of(name: str) -> str | None:
    """The handwritten app a contestant's ratio column is relative to."""
    framework = name.split("-", 1)[0]
    if framework not in ("fastapi", "litestar", "starlette"):
        return None
    return f"{framework}-handwritten"


def _percentile(sorted_values: Sequence[int], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def _spread(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "—"
    fmt = f"{{:,.{digits}f}}"
    median = fmt.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def targets_table(results: Results) -> list[str]:
    """One row per comparison and cell: the median per-round ratio of each route."""
    routes = results.config.routes
    rows = []
    for comparison in COMPARISONS:
        for cell in results.cells:
            values = {
                r: ratios(cell, comparison.contestant, comparison.reference, r) for r in routes
            }
            if not any(values.values()):
                continue
            cells = []
            holds = True
            for route in routes:
                if not values[route]:
                    cells.append("—")
                    continue
                median = statistics.median(values[route])
                cpu = statistics.median(
                    cpu_ratios(cell, comparison.contestant, comparison.reference, route)
                )
                cells.append(f"{median:.2f} (cpu {cpu:.2f})")
                holds = holds and (comparison.minimum is None or median >= comparison.minimum)
            verdict = "—" if comparison.minimum is None else ("yes" if holds else "**no**")
            target = "info" if comparison.minimum is None else f">= {comparison.minimum:.2f}"
            rows.append(
                [comparison.label, target, cell.database, str(cell.concurrency), *cells, verdict]
            )
    header = ["ratio", "target", "database", "c", *(ROUTE_LABELS[r] for r in routes), "holds"]
    return _table(header, rows)


def cell_tables(results: Results, cell: Cell) -> list[str]:
    """One table per route of a cell: throughput, latency and the ratio to handwritten."""
    lines: list[str] = []
    for route in results.config.routes:
        lines += [
            "",
            f"#### {cell.database}, concurrency {cell.concurrency}: {ROUTE_LABELS[route]}",
            "",
        ]
        rows = []
        for name in results.contestants:
            batches = cell.batches.get(name, {}).get(route, [])
            if not batches:
                continue
            latencies = sorted(ns for batch in batches for ns in batch.latencies_ns)
            reference = reference_of(name)
            ratio = "—"
            if reference and reference != name and reference in cell.batches:
                ratio = _spread(ratios(cell, name, reference, route), 2)
            rows.append(
                [
                    name,
                    _spread([b.rps for b in batches]),
                    _ms(_percentile(latencies, 0.50)),
                    _ms(_percentile(latencies, 0.99)),
                    ratio,
                    f"{statistics.median(b.cpu_us for b in batches):,.0f}",
                ]
            )
        header = [
            "contestant",
            "req/s median [min-max]",
            "p50 ms",
            "p99 ms",
            "x handwritten",
            "CPU µs/req",
        ]
        lines += _table(header, rows)
    return lines


def pool_table(results: Results) -> list[str]:
    """Highest checked-out count seen when a contestant's group stopped (should be 0)."""
    rows = []
    for name in results.contestants:
        values = [cell.checked_out.get(name) for cell in results.cells]
        if all(v is None for v in values):
            continue
        rows.append([name, *("—" if v is None else str(v) for v in values)])
    header = ["contestant", *(f"{c.database} c={c.concurrency}" for c in results.cells)]
    return _table(header, rows)


def rss_table(results: Results) -> list[str]:
    """RSS growth and checked-out connections after each long run."""
    rows = [
        [
            r.contestant,
            r.database,
            f"{r.requests:,}",
            f"{r.baseline_bytes / 1e6:.1f}",
            f"{r.final_bytes / 1e6:.1f}",
            f"{r.growth_bytes / 1e6:+.2f}",
            "—" if r.checked_out is None else str(r.checked_out),
            f"{r.requests / r.seconds:,.0f}",
            "yes" if r.growth_bytes <= RSS_LIMIT_BYTES and not r.checked_out else "**no**",
        ]
        for r in results.rss
    ]
    header = [
        "contestant",
        "database",
        "requests",
        "RSS after 1st tenth MB",
        "RSS at end MB",
        "growth MB",
        "checked out",
        "req/s",
        "holds (<= 5 MB, 0)",
    ]
    return _table(header, rows)


def markdown(results: Results, command: str) -> str:
    """The whole report."""
    config = results.config
    found = versions()
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(results.started))
    lines = [
        f"- date: {when}; duration {results.seconds:.0f} s",
        f"- command: `{command}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
        f"- machine: {_cpus()} cores, {platform.machine()}, {platform.system()}; "
        f"load average (1/5/15 min) {_load(results.load_before)} before, "
        f"{_load(results.load_after)} after",
        f"- config: {config.rounds} rounds x {config.requests} timed requests per route per "
        f"contestant, warm-up {config.warmup_for(1)} (c=1) / "
        f"{config.warmup_for(max(config.concurrencies))} (c={max(config.concurrencies)}), "
        f"pool size {config.pool.size} overflow {config.pool.max_overflow}, seed {config.seed}",
        "- driver overhead per request (an app that does nothing): "
        + ", ".join(f"{us:.1f} µs at c={k}" for k, us in results.driver_overhead_us.items()),
        f"- calls checked: {results.calls:,}; wrong answers: {results.failed_calls}",
    ]
    for wrong in results.problems:
        lines.append(f"  - {wrong}")
    if results.cells:
        lines += ["", "### Targets (median of per-round throughput ratios)", ""]
        lines += targets_table(results)
        lines += ["", "### Connections checked out when each app stopped (max)", ""]
        lines += pool_table(results)
    if results.rss:
        lines += ["", "### Memory over a long run (mixed routes)", ""]
        lines += rss_table(results)
    if results.cells:
        lines += ["", "### Per route"]
        for cell in results.cells:
            lines += cell_tables(results, cell)
    return "\n".join(lines) + "\n"


def summary(results: Results) -> dict[str, Any]:
    """Machine-readable results: per-round throughputs, latencies, ratios, RSS."""
    cells = []
    for cell in results.cells:
        contestants: dict[str, Any] = {}
        for name, routes in cell.batches.items():
            contestants[name] = {}
            for route, batches in routes.items():
                latencies = sorted(ns for b in batches for ns in b.latencies_ns)
                contestants[name][route] = {
                    "rps_per_round": [round(b.rps, 1) for b in batches],
                    "cpu_us_per_round": [round(b.cpu_us, 1) for b in batches],
                    "p50_ms": _percentile(latencies, 0.5) / 1e6,
                    "p99_ms": _percentile(latencies, 0.99) / 1e6,
                }
        comparisons = {
            c.label: {
                route: ratios(cell, c.contestant, c.reference, route)
                for route in results.config.routes
            }
            for c in COMPARISONS
        }
        cells.append(
            {
                "database": cell.database,
                "concurrency": cell.concurrency,
                "contestants": contestants,
                "ratios": comparisons,
                "checked_out": cell.checked_out,
            }
        )
    return {
        "versions": versions(),
        "load_before": results.load_before,
        "load_after": results.load_after,
        "seconds": results.seconds,
        "calls": results.calls,
        "failed_calls": results.failed_calls,
        "failures": results.failures,
        "driver_overhead_us": results.driver_overhead_us,
        "cells": cells,
        "rss": [
            {
                "contestant": r.contestant,
                "database": r.database,
                "requests": r.requests,
                "growth_bytes": r.growth_bytes,
                "checked_out": r.checked_out,
            }
            for r in results.rss
        ],
    }


def _cpus() -> int:
    return os.cpu_count() or 0


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)
