"""Start and stop a throwaway PgBouncer (Debian's ``pgbouncer``) for the tests.

It runs as a plain subprocess on a loopback port, in transaction pooling mode, with
its config in a temporary directory, in front of the test PostgreSQL server; never
as a system service.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

#: Server connections PgBouncer keeps per database/user: fewer than the app's pool,
#: so client connections really share server connections.
SERVER_POOL_SIZE = 4
#: Client connections PgBouncer accepts.
MAX_CLIENT_CONN = 500


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PgBouncer:
    """One PgBouncer process in transaction pooling mode."""

    def __init__(self, directory: Path, *, server_host: str, server_port: int, port: int) -> None:
        self.directory = directory
        self.port = port
        self.server_host = server_host
        self.server_port = server_port
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        """Path of the ``pgbouncer`` binary, if installed (Debian puts it in /usr/sbin)."""
        return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")

    def start(self) -> None:
        binary = self.binary()
        assert binary is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        # PgBouncer refuses to run as root; as root it switches to `user` and must
        # still read its files.
        self.directory.chmod(0o755)
        (self.directory / "userlist.txt").write_text('"postgres" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {SERVER_POOL_SIZE}\n"
            f"max_client_conn = {MAX_CLIENT_CONN}\n"
            # The admin console, for `portside check`'s connection budget.
            "admin_users = postgres\n"
            "ignore_startup_parameters = extra_float_digits\n"
            # Quiet: connection logging for thousands of requests is noise.
            "log_connections = 0\n"
            "log_disconnections = 0\n" + ("user = postgres\n" if os.geteuid() == 0 else "")
        )
        self.log = (self.directory / "pgbouncer.log").open("wb")
        self.process = subprocess.Popen(
            [binary, str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.directory / "pgbouncer.log").read_text(errors="replace")
                raise RuntimeError(f"PgBouncer did not start:\n{log}")
            time.sleep(0.05)

    def url(self, database: str) -> str:
        """A PostgreSQL URL for ``database`` through this PgBouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            self.log.close()
