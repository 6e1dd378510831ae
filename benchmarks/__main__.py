"""``uv run python -m benchmarks``: run the benchmark and print a Markdown report.

Examples::

    uv run python -m benchmarks                                   # the full run
    uv run python -m benchmarks --databases sqlite --rounds 3 --rss-requests 0
    uv run python -m benchmarks --contestants 'fastapi-*,sqlalchemy-raw'
    uv run python -m benchmarks --profile fastapi-portside --databases sqlite

Exits 1 if any response was wrong (status or body); targets are reported, not
enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import fnmatch
import gc
import json
import logging
import pstats
import random
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from benchmarks.checks import ROUTES, calls
from benchmarks.contestant import Contestant
from benchmarks.contestants import OPT_IN, roster
from benchmarks.databases import Backend, PoolConfig, postgresql_database, sqlite_database
from benchmarks.report import markdown, summary
from benchmarks.runner import Config, Runner, _remove


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="What each portside integration costs per request, side by side.",
    )
    d = Config()
    p.add_argument("--rounds", type=int, default=d.rounds, help="rounds per cell (%(default)s)")
    p.add_argument(
        "--requests",
        type=int,
        default=d.requests,
        help="timed requests per route per contestant per round (%(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed requests per route per contestant and round "
        "(default: max(2 x concurrency, 10))",
    )
    p.add_argument(
        "--interleave",
        type=int,
        default=d.interleave,
        help="sub-batches per timed batch, interleaved across a framework's contestants "
        "(%(default)s)",
    )
    p.add_argument("--concurrency", default="1,32", help="comma-separated (%(default)s)")
    p.add_argument("--databases", default="sqlite,postgresql", help="sqlite,postgresql")
    p.add_argument("--routes", default=",".join(ROUTES), help="get,list,create")
    p.add_argument("--contestants", default="*", help="comma-separated names or globs")
    p.add_argument("--skip", default="", help="comma-separated names or globs to leave out")
    p.add_argument(
        "--rss-requests",
        type=int,
        default=d.rss_requests,
        help="requests of the memory run, 0 to skip (%(default)s)",
    )
    p.add_argument("--rss-contestants", default=",".join(d.rss_contestants))
    p.add_argument("--rss-databases", default=",".join(d.rss_databases))
    p.add_argument("--rss-concurrency", type=int, default=d.rss_concurrency)
    p.add_argument("--pool-size", type=int, default=PoolConfig.size)
    p.add_argument("--max-overflow", type=int, default=PoolConfig.max_overflow)
    p.add_argument("--seed", type=int, default=0, help="shuffling and id choice")
    p.add_argument(
        "--postgresql-url",
        default=None,
        help="default: $PORTSIDE_BENCH_POSTGRESQL_URL or postgresql://postgres@127.0.0.1:5432/test",
    )
    p.add_argument("--sqlite-dir", type=Path, default=None, help="default: a temporary directory")
    p.add_argument("--output", type=Path, default=None, help="also write the report here")
    p.add_argument("--json", type=Path, default=None, help="write per-round numbers here")
    p.add_argument("--list", action="store_true", help="list the contestants and exit")
    p.add_argument(
        "--profile",
        metavar="CONTESTANT",
        default=None,
        help="cProfile one contestant (first database, last concurrency) and exit",
    )
    p.add_argument(
        "--profile-out",
        type=Path,
        default=None,
        help="with --profile: also save the raw stats (pstats format) here",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def select(all_contestants: Sequence[Contestant], include: str, exclude: str) -> list[Contestant]:
    """The contestants whose names match ``include`` and not ``exclude`` (globs)."""
    wanted, unwanted = _names(include), _names(exclude)
    # "*" leaves out the opt-in contestants; a pattern naming them runs them.
    chosen = [
        c
        for c in all_contestants
        if any(
            fnmatch.fnmatchcase(c.name, w) and (w != "*" or c.name not in OPT_IN) for w in wanted
        )
        and not any(fnmatch.fnmatchcase(c.name, u) for u in unwanted)
    ]
    if not chosen:
        known = ", ".join(c.name for c in all_contestants)
        raise SystemExit(f"no contestant matches {include!r}; known: {known}")
    return chosen


def config_from(args: argparse.Namespace, contestants: Sequence[Contestant]) -> Config:
    """A :class:`Config` from parsed arguments."""
    databases = cast("tuple[Backend, ...]", _names(args.databases))
    rss_databases = cast("tuple[Backend, ...]", _names(args.rss_databases))
    for backend in (*databases, *rss_databases):
        if backend not in ("sqlite", "postgresql"):
            raise SystemExit(f"unknown database {backend!r}: use sqlite and/or postgresql")
    for route in _names(args.routes):
        if route not in ROUTES:
            raise SystemExit(f"unknown route {route!r}; known: {', '.join(ROUTES)}")
    return Config(
        rounds=args.rounds,
        requests=args.requests,
        warmup=args.warmup,
        interleave=args.interleave,
        concurrencies=tuple(int(k) for k in _names(args.concurrency)),
        databases=databases,
        contestants=tuple(c.name for c in contestants),
        routes=_names(args.routes),
        rss_requests=args.rss_requests,
        rss_contestants=_names(args.rss_contestants),
        rss_databases=rss_databases,
        rss_concurrency=args.rss_concurrency,
        pool=PoolConfig(size=args.pool_size, max_overflow=args.max_overflow),
        seed=args.seed,
        sqlite_dir=args.sqlite_dir,
        postgresql_url=args.postgresql_url,
        progress=not args.quiet,
    )


async def profile(contestant: Contestant, config: Config, out: Path | None = None) -> None:
    """Profile ``contestant``'s timed batches on the event loop thread; print the top."""
    backend = config.databases[0]
    k = config.concurrencies[-1]
    runner = Runner(config, [contestant])
    if backend == "sqlite":
        database, folder = sqlite_database(config.sqlite_dir, config.pool)
    else:
        database, folder = postgresql_database(config.postgresql_url, config.pool), None
    rng = random.Random(config.seed)  # noqa: S311 - shuffling, not secrets
    try:
        await database.seed()
        admin = database.create_engine()
        profiler = cProfile.Profile()
        async with contestant.start(database) as running:
            for route in config.routes:
                await runner.drive(running, calls(route, config.warmup_for(k), rng), k)
            for _ in range(config.rounds):
                for route in config.routes:
                    batch = calls(route, config.requests, rng)
                    gc.collect()
                    profiler.enable()
                    await runner.drive(running, batch, k)
                    profiler.disable()
                await database.trim(admin)
        await admin.dispose()
        await database.drop()
    finally:
        if folder is not None:
            _remove(folder, config.sqlite_dir is None)
    if out is not None:
        profiler.dump_stats(out)
    stats = pstats.Stats(profiler, stream=sys.stdout)
    print(f"# cProfile of {contestant.name} on {backend}, concurrency {k}, routes {config.routes}")
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(60)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    args = parser().parse_args(argv)
    # Startup and shutdown log lines from every group of every round would drown the output.
    logging.getLogger("portside").setLevel(logging.WARNING)
    everyone = roster()
    if args.list:
        for c in everyone:
            print(f"{c.name:28} {c.framework:10} {c.kind}")
        return 0
    if args.profile:
        contestants = select(everyone, args.profile, "")
        asyncio.run(profile(contestants[0], config_from(args, contestants), args.profile_out))
        return 0
    contestants = select(everyone, args.contestants, args.skip)
    config = config_from(args, contestants)
    results = asyncio.run(Runner(config, contestants).run())
    command = "uv run python -m benchmarks " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    report = markdown(results, command.strip())
    print(report)
    if args.output:
        args.output.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(summary(results), indent=1))
    return 1 if results.failed_calls else 0


if __name__ == "__main__":
    raise SystemExit(main())
