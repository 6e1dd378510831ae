"""Run the ops app (:mod:`tests.production.apps`) under a real uvicorn subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.production.pgbouncer import free_port, listening

ROOT = Path(__file__).parents[2]


class Uvicorn:
    """``uvicorn --factory tests.production.apps:create_ops_app`` on a free port."""

    def __init__(self, database_url: str, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = os.environ | {"DATABASE_URL": database_url, "DATABASE_STARTUP_TIMEOUT": "10"}
        env.pop("DATABASE_ASYNC_URL", None)
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tests.production.apps:create_ops_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start:\n{self.output()}")
            time.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM: uvicorn's graceful shutdown."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Make sure the server is gone (kill it if SIGTERM did not do it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
