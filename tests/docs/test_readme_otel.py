"""The docs' OpenTelemetry examples run as written and report portside's telemetry.

Each framework's example and the SDK setup it imports are written, untouched, into a
fresh directory and run in a subprocess (OpenTelemetry's providers are set once per
process): one request through the in-process ASGI driver, then the SDK exports to the
console at exit, and the output must hold the unit of work's span and pool metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_readme_examples import ROOT, WARNINGS, readme_block
from tests.otel_support import FASTAPI_TRACES, STARLETTE_NAMES_ROUTES

SECTION = "# Observability (OpenTelemetry)"
PAGE = ROOT / "docs" / "observability.md"
DRIVER = """
import anyio
from opentelemetry import metrics, trace

from example_app import app
from portside_testing.asgi import AppRunner


async def main() -> None:
    async with AppRunner(app) as runner:
        response = await runner.request("GET", "/now")
        print("STATUS", response.status, flush=True)
        trace.get_tracer_provider().force_flush()
        metrics.get_meter_provider().force_flush()  # while the pools are open


anyio.run(main)
"""


@pytest.mark.parametrize(
    ("framework", "block"), [("fastapi", 1), ("litestar", 2), ("starlette", 3)]
)
def test_the_readme_otel_example_reports(framework: str, block: int, tmp_path: Path) -> None:
    (tmp_path / "telemetry.py").write_text(readme_block(SECTION, page=PAGE))
    (tmp_path / "example_app.py").write_text(readme_block(SECTION, skip=block, page=PAGE))
    (tmp_path / "drive.py").write_text(DRIVER)

    result = subprocess.run(
        [sys.executable, *WARNINGS, "drive.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "STATUS 200" in result.stdout, result.stdout
    for metric in ("db.client.connection.count", "db.client.connection.wait_time"):
        assert f'"name": "{metric}"' in result.stdout, metric
    if framework == "fastapi" and not FASTAPI_TRACES:
        # As the page says: FastAPI before 0.142 starts no request span, so a
        # request's unit (which joins its request's trace) has none either.
        assert '"name": "portside unit of work"' not in result.stdout
        return
    assert '"name": "portside unit of work"' in result.stdout
    assert '"portside.unit_of_work.outcome": "commit"' in result.stdout
    if framework != "starlette" or STARLETTE_NAMES_ROUTES:
        assert '"http.route": "/now"' in result.stdout
    unit = _span(result.stdout, "portside unit of work")
    assert unit["parent_id"] is not None, "no request span above the unit of work"


def _span(output: str, name: str) -> dict[str, object]:
    """The first span called ``name`` in the console exporter's output."""
    decoder = json.JSONDecoder()
    index = 0
    while (index := output.find("{", index)) != -1:
        try:
            document, end = decoder.raw_decode(output, index)
        except json.JSONDecodeError:
            index += 1
            continue
        if isinstance(document, dict) and document.get("name") == name:
            return document
        index = end
    raise AssertionError(f"no span {name!r} in:\n{output}")
