"""The ``-portside-otel`` contestants: portside with ``DATABASE_TELEMETRY=true``.

They install OpenTelemetry's SDK as an app in production would: a meter provider
with a reader (never collected here, so data points only accumulate) and a tracer
provider that samples every span and hands it to a batch processor whose exporter
drops it. The SDK is global to the process, so FastAPI (which makes spans of its own
once a tracer provider is set) would pay for it too: these contestants run only when
named (``--contestants 'starlette-portside*'``), never as part of ``*``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.contestant import AppBundle
from benchmarks.databases import BenchDatabase

_installed: list[bool] = []


class _DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def install_sdk() -> None:
    """Set the process's OpenTelemetry providers (once)."""
    if _installed:
        return
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_DroppingExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    _installed.append(True)


def with_telemetry(build: Callable[[BenchDatabase], AppBundle]) -> Callable[..., AppBundle]:
    """``build`` (a portside app builder) with telemetry on and the SDK installed."""

    def build_with_telemetry(database: BenchDatabase) -> AppBundle:
        install_sdk()
        return build(dataclasses.replace(database, telemetry=True))

    return build_with_telemetry
