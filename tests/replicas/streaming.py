"""A real streaming replica of the test PostgreSQL server, for the replica tests.

``pg_basebackup -R`` copies the local server's cluster into a temporary directory
(owned by the ``postgres`` OS user, mode 0700), and ``pg_ctl`` starts it as a hot
standby on a free loopback port, as that user. The primary must accept replication
connections from 127.0.0.1: :func:`allow_replication` adds
``host replication all 127.0.0.1/32 trust`` to its ``pg_hba.conf`` (and reloads it)
when no rule allows them yet, which needs write access to that file (root in CI).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from tests.production.pgbouncer import free_port, listening

#: Names of the replication slots of test replicas: prefix, test process id, port.
SLOT_PREFIX = "portside_tests_"
#: The rule :func:`allow_replication` adds, once.
HBA_RULE = "host replication all 127.0.0.1/32 trust"


class ReplicaUnavailableError(RuntimeError):
    """A replica cannot be made on this machine; the message says why."""


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _as_postgres() -> list[str]:
    """The command prefix that runs a program as the ``postgres`` OS user."""
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ReplicaUnavailableError("running as root but runuser is not installed")
        return [runuser, "-u", "postgres", "--"]
    import pwd

    if pwd.getpwuid(os.geteuid()).pw_name == "postgres":
        return []
    raise ReplicaUnavailableError(
        "the tests must run as root or as the postgres OS user to start a replica"
    )


def allow_replication(primary_url: str) -> None:
    """Make the primary accept replication connections from 127.0.0.1 (idempotent).

    Parallel test workers may get here at once: the rule is added under an exclusive
    lock on the file, and only if the file does not hold it yet.
    """
    with psycopg.connect(_libpq(primary_url), autocommit=True) as connection:
        rules = connection.execute(
            "SELECT count(*) FROM pg_hba_file_rules WHERE type = 'host' "
            "AND 'replication' = ANY(database) AND error IS NULL"
        ).fetchone()
        if rules and rules[0]:
            return
        hba_file = str(connection.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        if not os.access(hba_file, os.W_OK):
            raise ReplicaUnavailableError(
                f"the primary refuses replication connections and {hba_file} is not "
                f"writable here; add `{HBA_RULE}` to it and reload PostgreSQL"
            )
        with open(hba_file, "r+") as hba:
            fcntl.flock(hba, fcntl.LOCK_EX)  # released when the file closes
            if HBA_RULE not in hba.read().splitlines():  # another worker's, not reloaded yet
                hba.write(
                    f"\n# portside tests: streaming replicas (pg_basebackup -R)\n{HBA_RULE}\n"
                )
        connection.execute("SELECT pg_reload_conf()")
    time.sleep(0.2)  # the postmaster reloads asynchronously


def drop_abandoned_slots(primary_url: str) -> None:
    """Drop the slots of test replicas whose test process is gone (they keep WAL forever)."""
    with psycopg.connect(_libpq(primary_url), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE NOT active AND slot_name LIKE %s",
            (SLOT_PREFIX.replace("_", "\\_") + "%",),
        ).fetchall()
        for (slot,) in rows:
            pid = int(str(slot)[len(SLOT_PREFIX) :].split("_")[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                connection.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except PermissionError:  # alive, someone else's
                continue


class StreamingReplica:
    """One hot standby of the test server, started and removed by the tests."""

    def __init__(self, primary_url: str) -> None:
        self.primary_url = primary_url
        primary = make_url(primary_url)
        if primary.host not in (None, "127.0.0.1", "localhost"):
            raise ReplicaUnavailableError(f"the primary ({primary.host}) is not on this machine")
        self.database = primary.database or "postgres"
        with psycopg.connect(_libpq(primary_url), autocommit=True) as connection:
            version = int(str(connection.execute("SHOW server_version_num").fetchone()[0]))  # type: ignore[index]
        self.bindir = Path(f"/usr/lib/postgresql/{version // 10000}/bin")
        if not (self.bindir / "pg_basebackup").exists():
            raise ReplicaUnavailableError(f"no PostgreSQL server binaries in {self.bindir}")
        self.prefix = _as_postgres()
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="portside-replica-"))
        self.data = self.directory / "data"
        #: A physical replication slot keeps the primary's WAL until the replica has it,
        #: so a replica stopped for a while (or slow under load) can always catch up.
        self.slot = f"{SLOT_PREFIX}{os.getpid()}_{self.port}"

    def _run(self, program: str, *args: str) -> None:
        command = [*self.prefix, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")

    def create(self) -> None:
        """Copy the primary with ``pg_basebackup -R`` and start the standby."""
        allow_replication(self.primary_url)
        drop_abandoned_slots(self.primary_url)
        primary = make_url(self.primary_url)
        shutil.chown(self.directory, "postgres", "postgres")
        self.directory.chmod(0o700)
        self._run(
            "pg_basebackup",
            "-h", primary.host or "127.0.0.1",
            "-p", str(primary.port or 5432),
            "-U", primary.username or "postgres",
            "-D", str(self.data),
            "-R", "-X", "stream", "-c", "fast", "-C", "-S", self.slot,
        )  # fmt: skip
        (self.data / "postgresql.conf").write_text(
            f"port = {self.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.directory}'\n"
            "hot_standby = on\n"
            "max_standby_streaming_delay = 1s\n"
            "shared_buffers = 16MB\n"
            "ssl = off\n"
            "max_connections = 100\n"
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        for name in ("postgresql.conf", "pg_hba.conf"):
            shutil.chown(self.data / name, "postgres", "postgres")
        self.start()

    def start(self) -> None:
        """Start the standby (again) and wait until it answers."""
        log = self.directory / "replica.log"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while not listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not start listening")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the standby (fast shutdown: its clients are disconnected)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop it if running, drop its slot and delete its directory."""
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        with (
            contextlib.suppress(Exception),
            psycopg.connect(_libpq(self.primary_url), autocommit=True) as connection,
        ):
            connection.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (self.slot,),
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str | None = None) -> str:
        """A URL of ``database`` (default: the primary's) on the replica."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def _execute(self, sql: str) -> object:
        with psycopg.connect(_libpq(self.url()), autocommit=True) as connection:
            row = connection.execute(sql).fetchone()  # type: ignore[arg-type]
            return None if row is None else row[0]

    def pause(self) -> None:
        """Stop replaying WAL: from now on the replica lags behind every new write.

        A standby waiting for WAL only notices the request after replaying one more
        record, so this writes throwaway records until replay is really paused.
        """
        self._execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + 10
        with psycopg.connect(_libpq(self.primary_url), autocommit=True) as primary:
            while self._execute("SELECT pg_get_wal_replay_pause_state()") != "paused":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not pause its replay")
                primary.execute("SELECT pg_logical_emit_message(false, 'portside-tests', 'pause')")
                time.sleep(0.01)

    def resume(self) -> None:
        """Replay WAL again."""
        self._execute("SELECT pg_wal_replay_resume()")

    def catch_up(self, within: float = 30.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        with psycopg.connect(_libpq(self.primary_url), autocommit=True) as connection:
            target = str(connection.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
        deadline = time.monotonic() + within
        while True:
            caught_up = self._execute(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
            if caught_up:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not replay up to {target} in {within}s")
            time.sleep(0.02)
