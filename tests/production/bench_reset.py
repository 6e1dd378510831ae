"""Side-by-side cost of ``reset_session_state`` (not a test; run it by hand).

    uv run python -m tests.production.bench_reset [postgresql URL] [units]

Runs the same short unit of work (check out a connection, ``SELECT 1``, return it)
with the reset on and off, async (asyncpg) and sync (psycopg), and prints the mean
time per unit and the difference. ``SELECT 1`` changes no session state, so the
reset never runs and the two should be level: what is left is the cost of watching
each statement's text.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
import anyio.to_thread
from sqlalchemy import text

from portside import DatabaseSettings, Lifecycle

DEFAULT_URL = os.environ.get(
    "PORTSIDE_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def measure(url: str, units: int, *, reset: bool) -> tuple[float, float]:
    """Mean seconds per unit of work: (async, sync)."""
    settings = DatabaseSettings(url=url, pool_size=1, max_overflow=0, reset_session_state=reset)
    async with Lifecycle(settings) as lifecycle:
        started = time.perf_counter()
        for _ in range(units):
            async with lifecycle.async_session() as session:
                await session.exec(text("SELECT 1"))
        async_mean = (time.perf_counter() - started) / units

        def sync_units() -> float:
            engine = lifecycle.database().engine
            started = time.perf_counter()
            for _ in range(units):
                with engine.begin() as connection:
                    connection.exec_driver_sql("SELECT 1")
            return (time.perf_counter() - started) / units

        sync_mean = await anyio.to_thread.run_sync(sync_units)
    return async_mean, sync_mean


async def main(url: str, units: int) -> None:
    results = {}
    for reset in (False, True, False, True):  # interleaved, to even out warm-up
        results[reset] = await measure(url, units, reset=reset)
    for index, driver in enumerate(("asyncpg", "psycopg")):
        off, on = results[False][index], results[True][index]
        print(
            f"{driver}: reset off {off * 1e6:7.0f} us/unit, on {on * 1e6:7.0f} us/unit, "
            f"+{(on - off) * 1e6:.0f} us ({(on / off - 1) * 100:+.0f}%)"
        )


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL
    units = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    anyio.run(main, url, units)
