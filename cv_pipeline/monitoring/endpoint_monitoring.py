"""A monitoring pass over the served endpoints: for each, its window of the inference log against
the reference of the model version it mostly serves; rows appended to the Delta table
`monitoring_metrics`, figures and a self-contained HTML report like the evaluation's."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from cv_pipeline.monitoring.endpoint_health import (
    EndpointWindow,
    MonitoringConfig,
    monitor_endpoint,
    read_window,
)
from cv_pipeline.monitoring.reference import Reference, champion_reference

METRICS_SCHEMA = pa.schema([
    ("monitored_at", pa.timestamp("us", tz="UTC")),
    ("window_start", pa.timestamp("us", tz="UTC")),
    ("window_end", pa.timestamp("us", tz="UTC")),
    ("endpoint_name", pa.string()),
    ("task", pa.string()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("requests", pa.int64()),
    ("errors", pa.int64()),
    ("server_errors", pa.int64()),
    ("error_rate", pa.float64()),
    ("latency_p50_ms", pa.float64()),
    ("latency_p95_ms", pa.float64()),
    ("latency_p99_ms", pa.float64()),
    *[(f"{test}_{field}", kind) for test in ("input_drift", "representation_drift", "prediction_drift")
      for field, kind in (("statistic", pa.float64()), ("p_value", pa.float64()), ("drifted", pa.bool_()))],
    ("drift", pa.string()),  # JSON: every test's full result
    ("dagster_run_id", pa.string()),
])


def served_reference_entity(config) -> tuple[str, str]:
    """(model name, version) of the entity taking the most of an endpoint's traffic: the champion."""
    shares = {route.served_entity_name: route.traffic_percentage for route in config.routes}
    entity = max(config.served_entities, key=lambda e: shares.get(e.name, 0))
    return entity.entity_name, entity.entity_version


def monitor_served_endpoint(config, *, log_table: str | Path, lake_dir: str | Path, tracking_uri: str,
                            registry_uri: str | None = None, start: datetime, end: datetime,
                            reference_dir: str | Path, monitoring: MonitoringConfig = MonitoringConfig(),
                            reference: Reference | None = None) -> EndpointWindow:
    """Monitor one endpoint (an `EndpointConfig`) over [start, end)."""
    from cv_pipeline.models.tasks import get_task

    if reference is None:
        model_name, version = served_reference_entity(config)
        reference = champion_reference(lake_dir, model_name, version, tracking_uri=tracking_uri,
                                       registry_uri=registry_uri, cache_dir=reference_dir)
    rows = read_window(log_table, config.name, start, end)
    return monitor_endpoint(rows, endpoint=config.name, task=config.task, start=start, end=end,
                            reference=reference, signals_of=get_task(config.task).prediction_signals,
                            config=monitoring)


def metrics_rows(windows: list[EndpointWindow], run_id: str | None = None) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = []
    for window in windows:
        row = {"monitored_at": now, "window_start": window.window_start, "window_end": window.window_end,
               "endpoint_name": window.endpoint, "task": window.task, "model_name": window.model_name,
               "model_version": window.model_version, "requests": window.requests, "errors": window.errors,
               "server_errors": window.server_errors, "error_rate": window.error_rate,
               "latency_p50_ms": window.latency_ms["p50"], "latency_p95_ms": window.latency_ms["p95"],
               "latency_p99_ms": window.latency_ms["p99"],
               "drift": json.dumps({name: result.to_json() for name, result in window.drift.items()}),
               "dagster_run_id": run_id}
        for name, result in window.drift.items():
            row.update({f"{name}_statistic": result.statistic, f"{name}_p_value": result.p_value,
                        f"{name}_drifted": result.drifted})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def append_metrics(windows: list[EndpointWindow], table_path: str | Path, run_id: str | None = None) -> int:
    """One row per window appended to `monitoring_metrics` (partitioned by endpoint); the new version."""
    from cv_pipeline.data.delta_io import append_rows

    return append_rows(metrics_rows(windows, run_id), table_path, partition_by=("endpoint_name",))


def window_plots(window: EndpointWindow, latency_slo_ms: float | None = None) -> dict[str, bytes]:
    """The window's figures: input statistics (the most moved first), predicted classes, latency."""
    from cv_pipeline.monitoring.plots import categories_png, distributions_png, latency_png

    plots = {"latency": latency_png(window.latencies, latency_slo_ms,
                                    title=f"{window.endpoint}: latency per request")}
    if window.reference is not None and window.current is not None:
        moved = [name for name, _ in window.drift["input_drift"].top_features]
        names = moved + [name for name in window.reference.statistics if name not in moved]
        plots["input_statistics"] = distributions_png(window.reference.statistics, window.current.statistics, names)
        labels = next((name for name, values in window.reference.signals.items()
                       if values and isinstance(values[0], str)), None)
        if labels:
            plots["predicted_classes"] = categories_png(window.reference.signals[labels],
                                                        window.current.signals.get(labels, []))
    return plots


def report_html(window: EndpointWindow, plots: dict[str, bytes]) -> str:
    """The window's report: health, each drift verdict with what moved most, the figures."""
    from cv_pipeline.evaluation.report import ImagesSection, MetricsSection, NotesSection, TableSection, html_report

    health = {"requests": window.requests, "errors (4xx/5xx)": window.errors, "5xx": window.server_errors,
              "error rate": window.error_rate,
              **{f"latency {k} (ms)": v for k, v in window.latency_ms.items()}}
    drift_rows = [{"test": name, "verdict": {True: "drift", False: "no drift", None: "n/a"}[r.drifted],
                   "statistic": r.statistic, "p_value": r.p_value, "alpha": r.alpha, "reference n": r.n_reference,
                   "current n": r.n_current,
                   "moved most": ", ".join(f"{f} ({s:.3g})" for f, s in r.top_features[:3]), "message": r.message}
                  for name, r in window.drift.items()]
    return html_report(
        f"{window.endpoint}: {window.window_start:%Y-%m-%d %H:%M} to {window.window_end:%Y-%m-%d %H:%M} UTC",
        [MetricsSection("Service health", health),
         TableSection("Drift against the reference", drift_rows),
         ImagesSection("Figures", [(png, name.replace("_", " ")) for name, png in plots.items()]),
         NotesSection("Reference", [f"{window.model_name} v{window.model_version}: {window.reference_source}"
                                    if window.model_version else "no champion reference yet",
                                    "The three drift tests share alpha by Bonferroni (each at alpha/3)."])])
