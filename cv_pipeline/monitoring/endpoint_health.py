"""One endpoint over one time window of the inference log: how much it served, how fast, how often
it failed, and whether what it saw drifted from its champion's reference.

Service health reads every row of the window. The drift tests read the rows a 200 answered:
input drift on the image statistics of every served input (the model does not matter), and
representation and prediction drift on the inputs the reference's model version answered (a
challenger's features are another model's). The three tests share `alpha` by Bonferroni, so the
window's overall false-alarm rate stays at most `alpha`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cv_pipeline.monitoring.drift import DriftResult, input_drift, prediction_drift, representation_drift
from cv_pipeline.monitoring.reference import ObservedInputs, Reference

DRIFT_TESTS = ("input_drift", "representation_drift", "prediction_drift")


@dataclass(frozen=True)
class MonitoringConfig:
    """Thresholds of a monitoring pass (the Dagster resource `MonitoringPolicy` carries the same)."""

    alpha: float = 0.05  # overall false-alarm rate of a window's drift verdict, shared by the three tests
    min_samples: int = 30  # fewer inputs on a side: the test answers "too few samples", not a verdict
    n_components: int = 32
    n_permutations: int = 500
    latency_p95_slo_ms: float = 2000.0
    error_rate_slo: float = 0.01  # share of requests answered 5xx
    seed: int = 0


@dataclass
class EndpointWindow:
    """What `monitor_endpoint` found; `to_json` is the `cv-pipeline monitor --json` entry."""

    endpoint: str
    task: str
    window_start: datetime
    window_end: datetime
    requests: int
    errors: int  # answered 4xx or 5xx
    server_errors: int  # answered 5xx
    latency_ms: dict[str, float | None]
    model_name: str | None
    model_version: str | None
    drift: dict[str, DriftResult]
    reference_source: str = ""
    status_counts: dict[str, int] = field(default_factory=dict)
    latencies: list[tuple[datetime, float]] = field(default_factory=list, repr=False)
    current: ObservedInputs | None = field(default=None, repr=False)
    reference: ObservedInputs | None = field(default=None, repr=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def server_error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    @property
    def drifted(self) -> bool | None:
        """True if any test found drift; None if none could answer; else False."""
        verdicts = [result.drifted for result in self.drift.values()]
        if any(verdict is True for verdict in verdicts):
            return True
        return None if all(verdict is None for verdict in verdicts) else False

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint, "task": self.task,
            "window": {"start": self.window_start.isoformat(), "end": self.window_end.isoformat()},
            "requests": self.requests, "errors": self.errors, "server_errors": self.server_errors,
            "error_rate": self.error_rate, "status_counts": self.status_counts,
            "latency_ms": self.latency_ms,
            "model": {"name": self.model_name, "version": self.model_version},
            "reference": self.reference_source,
            "drifted": self.drifted,
            "drift": {name: result.to_json() for name, result in self.drift.items()},
        }


def read_window(log_table: str | Path, endpoint: str, start: datetime, end: datetime) -> list[dict]:
    """The inference log rows of `endpoint` with `start <= request_time < end`, oldest first."""
    import pyarrow.compute as pc

    from cv_pipeline.data.delta_io import is_delta_table, read_table

    if not is_delta_table(log_table):
        return []
    start, end = _utc(start), _utc(end)
    expression = ((pc.field("endpoint_name") == endpoint) & pc.field("request_date").isin(list(_dates(start, end)))
                  & (pc.field("request_time") >= start) & (pc.field("request_time") < end))
    columns = ["databricks_request_id", "request_time", "endpoint_name", "model_name", "model_version",
               "status_code", "execution_duration_ms", "error", "inputs"]
    rows = read_table(log_table, columns=columns, filters=expression).to_pylist()
    return sorted(rows, key=lambda row: row["request_time"])


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _dates(start: datetime, end: datetime):
    from datetime import timedelta

    day = start.date()
    while day <= end.date():
        yield day
        day += timedelta(days=1)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def monitor_endpoint(rows: list[dict], *, endpoint: str, task: str, start: datetime, end: datetime,
                     reference: Reference | None, signals_of=None,
                     config: MonitoringConfig = MonitoringConfig()) -> EndpointWindow:
    """Health and drift of one endpoint's window (`rows` from `read_window`) against `reference`
    (None: no champion yet, so no drift tests). `signals_of` is the task's `prediction_signals`."""
    statuses = Counter(int(row["status_code"]) for row in rows)
    errors = sum(n for status, n in statuses.items() if status >= 400)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    latencies = [(row["request_time"], float(row["execution_duration_ms"])) for row in rows]

    model_name = reference.model_name if reference else None
    model_version = reference.model_version if reference else None
    all_inputs, by_reference_model = [], []
    for row in rows:
        if int(row["status_code"]) != 200:
            continue
        inputs = row.get("inputs") or []
        all_inputs.extend(inputs)
        if reference and row.get("model_name") == model_name and str(row.get("model_version")) == model_version:
            by_reference_model.extend(inputs)
    current_all = ObservedInputs.from_rows(all_inputs, None)
    current = ObservedInputs.from_rows(by_reference_model, signals_of)
    drift = drift_tests(reference.observed if reference else None, current_all, current, config)
    return EndpointWindow(endpoint, task, _utc(start), _utc(end), len(rows), errors, server_errors,
                          _percentiles([latency for _, latency in latencies]), model_name, model_version, drift,
                          reference.source if reference else "", {str(k): n for k, n in statuses.items()}, latencies,
                          ObservedInputs(current_all.statistics, current.features, current.signals),
                          reference.observed if reference else None)


def drift_tests(reference: ObservedInputs | None, current_all: ObservedInputs, current: ObservedInputs,
                config: MonitoringConfig) -> dict[str, DriftResult]:
    """The three tests, each at alpha/3: input drift on `current_all` (every input served), the
    model's tests on `current` (the inputs the reference's model version answered)."""
    alpha = config.alpha / len(DRIFT_TESTS)
    if reference is None:
        return {name: _unanswered(name, alpha, current_all.count, "no champion reference yet")
                for name in DRIFT_TESTS}
    results = {"input_drift": input_drift(reference.statistics, current_all.statistics, alpha=alpha,
                                          min_samples=config.min_samples)}
    if reference.features is None or current.features is None:
        results["representation_drift"] = _unanswered(
            "representation_drift", alpha, 0 if current.features is None else len(current.features),
            "the model records no features" if reference.features is None else
            "no features recorded for the reference's model version in this window")
    else:
        results["representation_drift"] = representation_drift(
            reference.features, current.features, n_components=config.n_components,
            n_permutations=config.n_permutations, seed=config.seed, alpha=alpha, min_samples=config.min_samples)
    results["prediction_drift"] = prediction_drift(reference.signals, current.signals, alpha=alpha,
                                                   min_samples=config.min_samples)
    return results


def _unanswered(test: str, alpha: float, n_current: int, message: str) -> DriftResult:
    return DriftResult(test=test, method="", statistic=None, p_value=None, alpha=alpha, drifted=None,
                       n_reference=0, n_current=n_current, top_features=[], message=message, details={})


VERDICTS = {True: "DRIFT", False: "ok", None: "n/a"}


def format_windows(windows: list[dict[str, Any]], compact: bool = False) -> str:
    """The console table of `cv-pipeline monitor` from `EndpointWindow.to_json()` entries: per
    endpoint its health, then each drift verdict with its statistic (`compact`: one line each)."""
    lines = []
    for window in windows:
        if compact:
            latency = "/".join(f"{v:.0f}" if v is not None else "-" for v in window["latency_ms"].values())
            verdicts = ", ".join(f"{name.removesuffix('_drift')} {VERDICTS[r['drifted']]}"
                                 + (f" (p={r['p_value']:.2g})" if r["p_value"] is not None else "")
                                 for name, r in window["drift"].items())
            lines.append(f"  {window['endpoint']:34s} {window['requests']} requests, {window['errors']} errors, "
                         f"p50/p95/p99 {latency} ms; {verdicts}")
            continue
        shown = ", ".join(f"{k} {v:.0f} ms" for k, v in window["latency_ms"].items() if v is not None)
        lines.append(f"{window['endpoint']} ({window['task']})  {window['window']['start'][:16]} to "
                     f"{window['window']['end'][11:16]} UTC")
        lines.append(f"  requests {window['requests']}, errors {window['errors']} ({window['error_rate']:.1%}; "
                     f"5xx {window['server_errors']}), latency {shown or 'no requests'}")
        if window["model"]["version"]:
            lines.append(f"  reference: {window['model']['name']} v{window['model']['version']}, {window['reference']}")
        for name, result in window["drift"].items():
            verdict = VERDICTS[result["drifted"]]
            figure = "" if result["statistic"] is None else f"statistic {result['statistic']:.4g}"
            figure += "" if result["p_value"] is None else f", p {result['p_value']:.3g}"
            lines.append(f"  {name:<21} {verdict:<6}{figure:<28} {result['message']}")
    return "\n".join(lines)
