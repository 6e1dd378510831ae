"""OpenTelemetry SDK wiring for the telemetry tests: in-memory metrics and spans.

OpenTelemetry's global providers can be set once per process, so every test shares
one reader and one exporter; tests read deltas and filter by their own pool names.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from importlib import metadata
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from packaging.version import Version

#: Whether the installed Starlette names the matched route in the request's scope
#: (1.7 and later), where portside reads ``http.route``; FastAPI and Litestar always do.
STARLETTE_NAMES_ROUTES = Version(metadata.version("starlette")) >= Version("1.7")
#: Whether the installed FastAPI starts a server span per request itself (0.142 and
#: later); older FastAPI needs an ASGI instrumentation for the request spans.
FASTAPI_TRACES = importlib.util.find_spec("fastapi.telemetry") is not None

_state: dict[str, Any] = {}


def providers() -> tuple[InMemoryMetricReader, InMemorySpanExporter]:
    """The process's in-memory metric reader and span exporter (set up on first call)."""
    if not _state:
        reader = InMemoryMetricReader()
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        trace.set_tracer_provider(tracer_provider)
        _state.update(reader=reader, exporter=exporter)
    return _state["reader"], _state["exporter"]


Key = tuple[str, tuple[tuple[str, Any], ...]]


def snapshot() -> dict[Key, float]:
    """Every data point now: (metric, sorted attributes) -> value (histograms: count)."""
    reader, _ = providers()
    points: dict[Key, float] = defaultdict(float)
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = tuple(sorted((point.attributes or {}).items()))
                    value = point.count if isinstance(point, HistogramDataPoint) else point.value
                    points[(metric.name, attributes)] += value
    return points


def delta(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    """What changed between two snapshots (zero changes left out)."""
    keys = set(before) | set(after)
    changes = {key: after.get(key, 0) - before.get(key, 0) for key in keys}
    return {key: value for key, value in changes.items() if value}


def value(points: dict[Key, float], metric: str, **attributes: Any) -> float:
    """The sum over data points of ``metric`` whose attributes include ``attributes``."""
    wanted = {key.replace("__", "."): v for key, v in attributes.items()}
    return sum(
        v
        for (name, attrs), v in points.items()
        if name == metric and wanted.items() <= dict(attrs).items()
    )


def spans(name: str) -> list[ReadableSpan]:
    """Finished spans called ``name``."""
    _, exporter = providers()
    return [span for span in exporter.get_finished_spans() if span.name == name]
