"""A tiny run of the benchmark, so it keeps working: every contestant, every route.

It checks that every contestant answered every call correctly and left no
connection checked out, never how fast anything was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.__main__ import select
from benchmarks.checks import ROUTES
from benchmarks.contestants import roster
from benchmarks.report import markdown, summary
from benchmarks.runner import Config, Runner

pytestmark = pytest.mark.anyio


async def test_every_contestant_answers_every_route(tmp_path: Path) -> None:
    # advanced-alchemy is left out: importing it alone takes longer than this run.
    contestants = select(roster(), "*", "*advanced-alchemy")
    config = Config(
        rounds=1,
        requests=3,
        warmup=1,
        concurrencies=(1, 3),
        databases=("sqlite",),
        rss_requests=30,
        rss_contestants=("starlette-portside",),
        rss_databases=("sqlite",),
        sqlite_dir=tmp_path,
        driver_calls=50,
        progress=False,
    )

    results = await Runner(config, contestants).run()

    assert results.failed_calls == 0, results.problems
    assert set(results.failures) == {c.name for c in contestants}
    assert [(cell.database, cell.concurrency) for cell in results.cells] == [
        ("sqlite", 1),
        ("sqlite", 3),
    ]
    for cell in results.cells:
        for contestant in contestants:
            batches = cell.batches[contestant.name]
            assert sorted(batches) == sorted(ROUTES), contestant.name
            assert all(len(per_round) == 1 for per_round in batches.values())
            expected = 0 if contestant.uses_database else None
            assert cell.checked_out[contestant.name] == expected, contestant.name
    [memory] = results.rss
    assert memory.requests == 30
    assert memory.checked_out == 0
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - the database files are gone
    report = markdown(results, "smoke")
    assert all(c.name in report for c in contestants)
    assert summary(results)["failed_calls"] == 0
