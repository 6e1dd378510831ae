"""``portside check``: can this process reach its databases, and how are they set up?

Meant for operations (deploy checks, init containers, a first look at a broken
environment). It reads :class:`~portside.DatabaseSettings` from the environment,
or takes ``--url``, starts a :class:`~portside.Lifecycle` with a short timeout and
prints per database: the masked URLs, drivers, server version, round-trip latency,
pool settings and, for SQLite, the effective pragmas.

For PostgreSQL it also prints the connection budget (:mod:`portside.budget`): with
``--workers N`` (default: ``WEB_CONCURRENCY``, else 1), whether N worker processes'
pools fit in the server's ``max_connections`` (and PgBouncer's limits, read from its
admin console, when ``DATABASE_PGBOUNCER`` is set).

Exit status: 0 when every database answers (and fits), 1 when one does not answer,
2 for a usage or configuration error, 3 when the pools do not fit the server. The
reason is one line on stderr, with no traceback and no password.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy import Connection

from portside.adapters import AsyncAdapter, SyncAdapter
from portside.budget import ServerSlots, budget
from portside.database import Database
from portside.errors import ConfigurationError, PortsideError
from portside.lifecycle import Lifecycle
from portside.settings import DatabaseSettings
from portside.urls import driver_name, parse_url, redact

__all__ = ["EXIT_DOWN", "EXIT_OK", "EXIT_OVER_BUDGET", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_DOWN = 1
EXIT_USAGE = 2
EXIT_OVER_BUDGET = 3

_DEFAULT_TIMEOUT = 5.0
_NAME = "default"
_VERSION_QUERIES = {"postgresql": "SHOW server_version", "sqlite": "SELECT sqlite_version()"}
_SQLITE_PRAGMAS = ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
_SQLITE_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``portside`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so tests and other tools can call it.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    # The lifecycle logs every retry; here the outcome is reported once, on stderr.
    # Without a handler Python's last-resort handler would print those lines too.
    quiet = logging.NullHandler()
    logging.getLogger("portside").addHandler(quiet)
    try:
        workers = args.workers or _workers_from_environment()
        if workers is None:
            return EXIT_USAGE
        return _run(args.url, args.timeout, as_json=args.json, workers=workers)
    finally:
        logging.getLogger("portside").removeHandler(quiet)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portside", description="portside: SQL databases for ASGI apps."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="connect to the configured databases and report how they are set up",
        description=(
            "Connect to the database configured by the DATABASE_* environment variables "
            "(or a .env file), or to --url, and print its masked URLs, drivers, server "
            "version, latency, pool settings and SQLite pragmas, and for PostgreSQL "
            "whether the pools of --workers processes fit the server's max_connections "
            "(and PgBouncer's limits when DATABASE_PGBOUNCER is set). Exit status: 0 "
            "when every database answers and fits, 1 when one does not answer, 2 for a "
            "usage or configuration error, 3 when the pools do not fit."
        ),
    )
    check.add_argument(
        "--url",
        help="check this SQLAlchemy URL (sync or async) instead of DATABASE_URL/DATABASE_ASYNC_URL",
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=_DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a database after this long (default: {_DEFAULT_TIMEOUT:g})",
    )
    check.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes of the deployment, for the connection budget "
        "(default: WEB_CONCURRENCY, else 1)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _workers_from_environment() -> int | None:
    """``WEB_CONCURRENCY`` (what uvicorn and gunicorn read), else 1; ``None`` if invalid."""
    text = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not text:
        return 1
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as exc:
        print(f"portside check: WEB_CONCURRENCY: {exc}", file=sys.stderr)
        return None


def _run(url: str | None, timeout: float, *, as_json: bool, workers: int) -> int:
    try:
        settings = _settings(url, timeout)
    except (ConfigurationError, ValidationError) as exc:
        reason = _config_reason(exc)
        if as_json:
            print(json.dumps({"ok": False, "error": reason, "databases": {}}, indent=2))
        print(f"portside check: {reason}", file=sys.stderr)
        return EXIT_USAGE

    reports = {_NAME: anyio.run(_check, _NAME, settings, workers)}
    ok = all(report["ok"] for report in reports.values())
    over = [
        f"database {name!r}: {' '.join(report['budget']['problems'])}"
        for name, report in reports.items()
        if report["budget"] and not report["budget"]["fits"]
    ]
    if as_json:
        errors = [report["error"] for report in reports.values() if report["error"]]
        errors += over
        document = {
            "ok": ok and not over,
            "error": "; ".join(errors) or None,
            "databases": reports,
        }
        print(json.dumps(document, indent=2))
    else:
        for name, report in reports.items():
            _print_text(name, report)
    for report in reports.values():
        if report["error"]:
            print(f"portside check: {report['error']}", file=sys.stderr)
    for problem in over:
        print(f"portside check: {problem}", file=sys.stderr)
    if not ok:
        return EXIT_DOWN
    return EXIT_OVER_BUDGET if over else EXIT_OK


def _settings(url: str | None, timeout: float) -> DatabaseSettings:
    """The settings to check: from the environment, or ``url`` with the rest from it."""
    if url is None:
        settings = DatabaseSettings()
    else:
        # Parsed here first so that a malformed URL's error names --url, not DATABASE_URL.
        is_async = parse_url(url, setting="--url").get_dialect().is_async
        # The other URL is set to None explicitly so an unrelated DATABASE_ASYNC_URL
        # (or DATABASE_URL) in the environment cannot pair with --url.
        key, other = ("async_url", "url") if is_async else ("url", "async_url")
        settings = DatabaseSettings(**{key: url, other: None})
    return settings.model_copy(
        update={
            "startup_timeout": timeout,
            "connect_timeout": min(settings.connect_timeout, timeout),
        }
    )


def _config_reason(exc: ConfigurationError | ValidationError) -> str:
    if isinstance(exc, ConfigurationError):
        return _one_line(str(exc))
    # hide_input_in_errors keeps the offending values (maybe a password) out of these.
    problems = [
        f"DATABASE_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


async def _check(name: str, settings: DatabaseSettings, workers: int) -> dict[str, Any]:
    """Start a lifecycle for one database and describe it; failures become ``error``."""
    wanted = {"sync": ("sync",), "async": ("async",)}.get(settings.engines, ("sync", "async"))
    kinds = list(wanted)
    urls = {"sync": settings.sync_url_object, "async": settings.async_url_object}
    masked = {"sync": settings.masked_url, "async": settings.masked_async_url}
    report: dict[str, Any] = {
        "ok": False,
        "error": None,
        "backend": settings.sync_url_object.get_backend_name(),
        "urls": {kind: masked[kind] for kind in kinds},
        "drivers": {kind: driver_name(urls[kind]) for kind in kinds},
        "server_version": None,
        "latency_ms": None,
        "pool": None,
        "pragmas": None,
        "budget": None,
        "replicas": [],
    }
    try:
        async with Lifecycle({name: settings}) as lifecycle:
            kinds = list(lifecycle.database(name).kinds)  # "auto" built what is installed
            report["urls"] = {kind: masked[kind] for kind in kinds}
            report["drivers"] = {kind: driver_name(urls[kind]) for kind in kinds}
            status = (await lifecycle.ping())[name]
            report["replicas"] = [replica.as_dict() for replica in status.replicas]
            if not status.up:
                report["error"] = f"Database {name!r} ({masked[kinds[-1]]}) did not answer: "
                report["error"] += str(status.error)
            else:
                assert status.latency is not None
                report["latency_ms"] = round(status.latency * 1000, 3)
                report |= await _inspect(lifecycle, name, report["backend"])
                if report["backend"] == "postgresql":
                    report["budget"] = await _budget(lifecycle, name, report, workers)
    except PortsideError as exc:  # StartupError and friends: already say which database
        # The startup timeout came from --timeout here, not from the environment.
        report["error"] = str(exc).replace("(DATABASE_STARTUP_TIMEOUT)", "(--timeout)")
    except Exception as exc:  # every other failure is reported as one line too
        detail = f"{type(exc).__name__}: {exc}"
        report["error"] = f"Database {name!r} ({masked[kinds[-1]]}): {detail}"
    if report["error"]:
        report["error"] = _one_line(redact(report["error"], urls["sync"], urls["async"]))
    report["ok"] = report["error"] is None
    return report


async def _inspect(lifecycle: Lifecycle, name: str, backend: str) -> dict[str, Any]:
    """Server version, pragmas and effective pool settings of a running database."""
    database = lifecycle.database(name)
    probe = partial(_probe, backend=backend)
    if "async" in database.kinds:
        async with database.async_engine.connect() as connection:
            facts = await connection.run_sync(probe)
        port: object = database.async_port()
    else:
        engine = database.engine

        def probe_sync() -> dict[str, Any]:
            with engine.connect() as connection:
                return probe(connection)

        facts = await anyio.to_thread.run_sync(probe_sync)
        port = database.sync_port()
    # The adapter's own engine options, not the raw settings: SQLite, for one,
    # turns pre-ping off whatever the settings say.
    if isinstance(port, SyncAdapter | AsyncAdapter):
        options = port.engine_options()
        facts["pool"] = {
            "size": options.get("pool_size"),
            "max_overflow": options.get("max_overflow"),
            "timeout": options.get("pool_timeout"),
            "recycle": options.get("pool_recycle"),
            "pre_ping": port.pings_on_checkout,
        }
    return facts


async def _budget(
    lifecycle: Lifecycle, name: str, report: dict[str, Any], workers: int
) -> dict[str, Any]:
    database = lifecycle.database(name)
    pools: dict[str, int] = {}
    for kind in database.kinds:
        port = database.sync_port() if kind == "sync" else database.async_port()
        if isinstance(port, SyncAdapter | AsyncAdapter):
            options = port.engine_options()
            pools[kind] = options.get("pool_size", 0) + options.get("max_overflow", 0)
    slots = ServerSlots(**report.pop("server_slots"))
    bouncer: dict[str, int] | None = None
    unread: str | None = None
    if database.settings.pgbouncer:
        bouncer, unread = await anyio.to_thread.run_sync(
            _pgbouncer_config, database, abandon_on_cancel=True
        )
    return budget(
        workers=workers, pools=pools, server=slots, pgbouncer=bouncer, pgbouncer_unread=unread
    ).as_dict()


_PGBOUNCER_KEYS = ("max_client_conn", "default_pool_size", "reserve_pool_size")


def _pgbouncer_config(database: Database) -> tuple[dict[str, int] | None, str | None]:
    """PgBouncer's pool limits from its admin console, or why they could not be read.

    The console is the virtual database ``pgbouncer`` on PgBouncer's own address,
    open to the users in its ``admin_users`` or ``stats_users``.
    """
    url = database.settings.sync_url_object
    try:
        import psycopg  # noqa: PLC0415 - only for PgBouncer's console

        with psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname="pgbouncer",
            connect_timeout=max(1, round(database.settings.connect_timeout)),
            autocommit=True,
        ) as connection:
            rows = connection.execute("SHOW CONFIG").fetchall()
    except Exception as exc:
        detail = database.redact(f"{type(exc).__name__}: {exc}")
        return None, _one_line(
            f"{detail} (its admin console, database 'pgbouncer' at {url.host}:{url.port}, "
            "answers users listed in admin_users or stats_users)"
        )
    config = {str(row[0]): str(row[1]) for row in rows}
    try:
        return {key: int(config[key]) for key in _PGBOUNCER_KEYS}, None
    except (KeyError, ValueError):
        return None, f"SHOW CONFIG lacks one of {', '.join(_PGBOUNCER_KEYS)}"


def _probe(connection: Connection, *, backend: str) -> dict[str, Any]:
    def scalar(sql: str) -> Any:
        return connection.exec_driver_sql(sql).scalar()

    query = _VERSION_QUERIES.get(backend)
    facts: dict[str, Any] = {"server_version": str(scalar(query)) if query else None}
    if backend == "sqlite":
        pragmas = {pragma: scalar(f"PRAGMA {pragma}") for pragma in _SQLITE_PRAGMAS}
        pragmas["foreign_keys"] = bool(pragmas["foreign_keys"])
        pragmas["synchronous"] = _SQLITE_SYNCHRONOUS.get(
            pragmas["synchronous"], pragmas["synchronous"]
        )
        facts["pragmas"] = pragmas
    if backend == "postgresql":
        # current_setting(..., true) is NULL where a setting does not exist (before 16).
        facts["server_slots"] = {
            setting: int(scalar(f"SELECT current_setting('{setting}', true)") or 0)
            for setting in (
                "max_connections",
                "superuser_reserved_connections",
                "reserved_connections",
            )
        }
    return facts


def _print_text(name: str, report: dict[str, Any]) -> None:
    lines = [f"database {name!r}: {'ok' if report['ok'] else 'FAILED'}"]
    for kind, url in report["urls"].items():
        lines.append(f"  {kind + ' url:':<11} {url} (driver {report['drivers'][kind]})")
    if report["ok"]:
        pool = report["pool"]
        recycle = "off" if pool["recycle"] == -1 else f"{pool['recycle']:g}s"
        lines += [
            f"  server:     {report['backend']} {report['server_version']}",
            f"  latency:    {report['latency_ms']:.1f} ms",
            f"  pool:       size={pool['size']} max_overflow={pool['max_overflow']} "
            f"timeout={pool['timeout']:g}s recycle={recycle} "
            f"pre_ping={_on_off(pool['pre_ping'])}",
        ]
        if report["budget"] is not None:
            first, *more = report["budget"]["summary"]
            lines.append(f"  budget:     {first}")
            lines += [f"              {line}" for line in more]
        if report["pragmas"] is not None:
            pragmas = " ".join(
                f"{key}={_on_off(value) if isinstance(value, bool) else value}"
                for key, value in report["pragmas"].items()
            )
            lines.append(f"  pragmas:    {pragmas}")
    else:
        lines.append(f"  error:      {report['error']}")
    for replica in report["replicas"]:
        lag = "lag unknown" if replica["lag_s"] is None else f"lag {replica['lag_s']:g}s"
        why = f": {replica['error']}" if replica["error"] else ""
        lines.append(f"  replica:    {replica['url']} {replica['state']} ({lag}){why}")
    print("\n".join(lines))


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _one_line(text: str) -> str:
    """``text`` on one line: drivers' messages may span several."""
    return " ".join(text.split())
