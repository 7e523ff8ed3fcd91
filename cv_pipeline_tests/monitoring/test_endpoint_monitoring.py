"""One endpoint's window of a real (Delta) inference_log: health figures, the three drift verdicts
against a reference, what is left out of which test, too-small windows, the metrics table, the
report and the monitoring asset when nothing is served."""

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cv_pipeline.data.delta_io import append_rows, read_table
from cv_pipeline.deployment.inference_log import PARTITION_BY, to_arrow
from cv_pipeline.models.builtin_tasks import classification_signals
from cv_pipeline.monitoring.endpoint_health import MonitoringConfig, format_windows, monitor_endpoint, read_window
from cv_pipeline.monitoring.endpoint_monitoring import append_metrics, report_html, window_plots
from cv_pipeline.monitoring.reference import ObservedInputs, Reference

ENDPOINT, MODEL = "cv_pipeline_classification", "cv_pipeline_classification"
START = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
LABELS = ("circle", "square", "star")
CONFIG = MonitoringConfig(n_permutations=200)


def _input(rng, row: int, shift: float = 0.0, labels=LABELS) -> dict:
    label = str(rng.choice(labels))
    statistics = {"brightness": float(rng.normal(0.5 + shift, 0.05)), "contrast": float(rng.normal(0.2, 0.03)),
                  "sharpness": float(rng.normal(3.0 - 10 * shift, 0.3))}
    return {"row": row, "sha256": f"{rng.integers(1 << 60):x}", "width": 64, "height": 64,
            "prediction": json.dumps({"label": label, "score": float(rng.uniform(0.6, 1.0))}),
            "statistics": statistics, "features": rng.normal(shift * 4, 1.0, 16).astype(np.float32).tolist()}


def _reference(rng, n: int = 300) -> Reference:
    rows = [_input(rng, 0) for _ in range(n)]
    return Reference("classification", MODEL, "1", "synthetic train split",
                     ObservedInputs.from_rows(rows, classification_signals))


def _log(path, rng, *, n: int, shift: float = 0.0, version: str = "1", start=START, status: int = 200,
         labels=LABELS, rows_per_request: int = 4) -> None:
    records = []
    for k in range(n):
        records.append({"databricks_request_id": f"r{version}-{start:%H%M}-{k}-{shift}", "client_request_id": None,
                        "request_time": start + timedelta(seconds=k), "endpoint_name": ENDPOINT,
                        "served_entity_id": f"{MODEL}-{version}", "model_name": MODEL, "model_version": version,
                        "status_code": status, "execution_duration_ms": float(20 + k % 10), "request": "{}",
                        "response": "{}", "error": None if status == 200 else "boom",
                        "inputs": [_input(rng, r, shift, labels) for r in range(rows_per_request)]
                        if status == 200 else []})
    append_rows(to_arrow(records), path, partition_by=PARTITION_BY)


def _window(path, reference, start=START, end=START + timedelta(hours=1)):
    return monitor_endpoint(read_window(path, ENDPOINT, start, end), endpoint=ENDPOINT, task="classification",
                            start=start, end=end, reference=reference, signals_of=classification_signals,
                            config=CONFIG)


def test_a_clean_window_has_its_health_figures_and_no_drift(tmp_path):
    rng = np.random.default_rng(1)
    log = tmp_path / "inference_log"
    _log(log, rng, n=30)
    _log(log, rng, n=2, status=500)
    _log(log, rng, n=5, start=START + timedelta(hours=1))  # the next window: not read
    window = _window(log, _reference(rng))
    assert (window.requests, window.errors, window.server_errors) == (32, 2, 2)
    assert window.server_error_rate == pytest.approx(2 / 32)
    assert window.latency_ms["p50"] == pytest.approx(np.percentile([20 + k % 10 for k in range(30)] + [20, 21], 50))
    assert set(window.drift) == {"input_drift", "representation_drift", "prediction_drift"}
    assert all(result.drifted is False for result in window.drift.values()), window.drift
    assert all(result.n_current == 120 for result in window.drift.values() if result.test != "prediction_drift")
    entry = json.loads(json.dumps(window.to_json()))
    assert entry["endpoint"] == ENDPOINT and set(entry["latency_ms"]) == {"p50", "p95", "p99"}
    assert {"statistic", "p_value", "threshold", "drifted"} <= set(entry["drift"]["input_drift"])
    assert entry["drift"]["input_drift"]["threshold"] == pytest.approx(0.05 / 3)  # Bonferroni over three tests
    assert "input_drift" in format_windows([entry])


def test_shifted_inputs_drift_and_name_what_moved(tmp_path):
    rng = np.random.default_rng(2)
    log = tmp_path / "inference_log"
    _log(log, rng, n=30, shift=0.1, labels=("circle",))
    window = _window(log, _reference(rng))
    assert window.drifted is True
    assert window.drift["input_drift"].drifted and window.drift["input_drift"].top_features[0][0] in (
        "brightness", "sharpness")
    assert window.drift["representation_drift"].drifted
    assert window.drift["prediction_drift"].drifted  # one class left
    plots = window_plots(window, latency_slo_ms=2000)
    assert set(plots) == {"latency", "input_statistics", "predicted_classes"}
    assert all(png.startswith(b"\x89PNG") for png in plots.values())
    html = report_html(window, plots)
    assert "Service health" in html and "input_drift" in html and html.count("data:image/png;base64") == 3


def test_a_small_window_says_too_few_samples_instead_of_alarming(tmp_path):
    rng = np.random.default_rng(3)
    log = tmp_path / "inference_log"
    _log(log, rng, n=3, shift=0.5)  # 12 inputs, far off, but too few to judge
    window = _window(log, _reference(rng))
    assert window.drifted is None
    assert all(r.drifted is None and "too few" in r.message for r in window.drift.values()), window.drift


def test_a_challengers_answers_are_left_out_of_the_models_tests(tmp_path):
    """Input drift reads every input; representation and prediction drift only those the reference's
    model version answered (another version's features are another model's)."""
    rng = np.random.default_rng(4)
    log = tmp_path / "inference_log"
    _log(log, rng, n=30)
    _log(log, rng, n=10, version="2", shift=0.3)
    window = _window(log, _reference(rng))
    assert window.drift["input_drift"].n_current == 160
    assert window.drift["representation_drift"].n_current == 120


def test_without_a_reference_or_a_log_nothing_is_judged(tmp_path):
    window = _window(tmp_path / "no_table", None)
    assert window.requests == 0 and window.latency_ms == {"p50": None, "p95": None, "p99": None}
    assert all(r.drifted is None for r in window.drift.values())


def test_reference_round_trip_and_metrics_rows(tmp_path):
    rng = np.random.default_rng(5)
    reference = _reference(rng, n=50)
    loaded = Reference.load(reference.save(tmp_path / "ref.npz"))
    assert (loaded.model_name, loaded.model_version, loaded.source) == (MODEL, "1", "synthetic train split")
    np.testing.assert_array_equal(loaded.observed.features, reference.observed.features)
    assert loaded.observed.signals == reference.observed.signals
    with pytest.raises(ValueError, match="not a monitoring reference"):
        np.savez(tmp_path / "junk.npz", header=np.array(json.dumps({"format": "other"})))
        Reference.load(tmp_path / "junk.npz")
    log = tmp_path / "inference_log"
    _log(log, rng, n=30)
    windows = [_window(log, reference), _window(log, reference, START + timedelta(hours=1), START + timedelta(hours=2))]
    append_metrics(windows, tmp_path / "monitoring_metrics", run_id="run-1")
    rows = read_table(tmp_path / "monitoring_metrics").to_pylist()
    assert [row["requests"] for row in sorted(rows, key=lambda r: r["window_start"])] == [30, 0]
    assert rows[0]["endpoint_name"] == ENDPOINT and rows[0]["dagster_run_id"] == "run-1"
    assert {"input_drift_p_value", "representation_drift_drifted", "prediction_drift_statistic"} <= set(rows[0])


def test_the_monitoring_asset_of_an_endpoint_not_served_passes_saying_so(tmp_path):
    import dagster as dg

    from cv_pipeline.defs.monitoring import MONITORING_ASSETS
    from cv_pipeline.defs.resources import LakeResource, MLflowResource, MonitoringPolicy, ServingResource

    result = dg.materialize(
        [MONITORING_ASSETS["classification"]], partition_key="2026-01-01-00:00",
        resources={"lake": LakeResource(lake_dir=str(tmp_path / "lake")),
                   "mlflow": MLflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                   "serving": ServingResource(state_dir=str(tmp_path / "serving")),
                   "monitoring": MonitoringPolicy(reference_dir=str(tmp_path / "references"))},
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"no_input_drift": True, "no_prediction_drift": True, "latency_within_slo": True,
                      "error_rate_within_slo": True}
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["state"].value == "NOT_SERVED"
