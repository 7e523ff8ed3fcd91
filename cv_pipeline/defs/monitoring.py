"""Monitoring, per endpoint and time window: `<task>_endpoint_monitoring` reads the window of
`inference_log` its endpoint wrote, measures service health and drift against the champion's
training split, appends a row to `monitoring_metrics`, writes an HTML report and shows the figures;
its checks say whether the input or the predictions drifted and whether latency and errors stay
within their SLOs. A failed drift check retrains the task's model (cv_pipeline.defs.automation)."""

from datetime import datetime, timezone

import dagster as dg

from cv_pipeline import settings
from cv_pipeline.defs.automation import monitoring_condition
from cv_pipeline.defs.metadata import markdown_table
from cv_pipeline.defs.resources import LakeResource, MLflowResource, MonitoringPolicy, ServingResource
from cv_pipeline.defs.serving import ENDPOINT_ASSETS

# Hourly windows; the current hour is a partition too (end_offset=1), so a pass can watch it fill.
monitoring_windows = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00", end_offset=1)

MONITORING_CHECKS = {
    "no_input_drift": "The window's inputs match the champion's training split: image statistics (KS per "
                      "statistic, Holm) and the model's representation (PCA + MMD permutation test).",
    "no_prediction_drift": "The window's predictions match the champion's on its training split (classes by "
                           "chi-square, scores, counts and sizes by KS, Holm).",
    "latency_within_slo": "The window's p95 latency is within the SLO.",
    "error_rate_within_slo": "The share of requests answered 5xx is within the SLO.",
}


def _severity(name: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if name.upper() == "ERROR" else dg.AssetCheckSeverity.WARN


def _drift_check(name: str, results, policy: MonitoringPolicy) -> dg.AssetCheckResult:
    """Fails when any of `results` found drift; passes (saying so) when none could answer."""
    drifted = [r for r in results if r.drifted]
    answered = [r for r in results if r.drifted is not None]
    worst = min(answered, key=lambda r: r.p_value if r.p_value is not None else 1.0, default=None)
    return dg.AssetCheckResult(
        check_name=name, passed=not drifted, severity=_severity(policy.drift_severity),
        metadata={"figure": "p_value", "value": worst.p_value if worst else None,
                  "threshold": worst.alpha if worst else policy.alpha,
                  "tests": dg.MetadataValue.json({r.test: r.to_json() for r in results}),
                  "message": "; ".join(f"{r.test}: {r.message}" for r in results)})


def monitoring_asset(task: str):
    from cv_pipeline.deployment.endpoints import endpoint_name

    name = endpoint_name(task)

    @dg.asset(
        name=f"{task}_endpoint_monitoring", deps=[dg.AssetKey(f"{task}_endpoint")], group_name="monitoring",
        partitions_def=monitoring_windows, kinds={"delta", "python"}, tags={"task": task},
        automation_condition=monitoring_condition(),
        description=f"The {name} endpoint over one hour of inference_log: requests, errors, latency p50/p95/p99, "
                    "drift of its inputs, representation and predictions against the champion's training split; "
                    "a row of monitoring_metrics, figures and an HTML report.",
        check_specs=[dg.AssetCheckSpec(check, asset=f"{task}_endpoint_monitoring", description=text)
                     for check, text in MONITORING_CHECKS.items()],
    )
    def _monitoring(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource,
                    serving: ServingResource, monitoring: MonitoringPolicy):
        from pathlib import Path

        from cv_pipeline.deployment.endpoints import read_endpoint_configs
        from cv_pipeline.evaluation.plots import png_data_uri_markdown
        from cv_pipeline.evaluation.report import write_report
        from cv_pipeline.monitoring.endpoint_monitoring import (
            append_metrics,
            monitor_served_endpoint,
            report_html,
            window_plots,
        )

        window = context.partition_time_window
        config = read_endpoint_configs(Path(serving.state_dir)).get(name)
        if config is None:
            context.log.warning(f"{name} is not served: nothing to monitor")
            return dg.MaterializeResult(
                metadata={"endpoint": name, "state": "NOT_SERVED"},
                check_results=[dg.AssetCheckResult(check_name=check, passed=True,
                                                   metadata={"message": f"{name} is not served"})
                               for check in MONITORING_CHECKS])
        result = monitor_served_endpoint(config, log_table=lake.table_path("inference_log"), lake_dir=lake.lake_dir,
                                         tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.registry_uri,
                                         start=window.start, end=window.end,
                                         reference_dir=monitoring.reference_dir, monitoring=monitoring.config())
        version = append_metrics([result], lake.table_path("monitoring_metrics"), run_id=context.run_id)
        plots = window_plots(result, monitoring.latency_p95_slo_ms)
        report = write_report(settings.reports_dir() / f"{context.asset_key.to_python_identifier()}-"
                              f"{window.start:%Y%m%dT%H}-{context.run_id[:8]}.html", report_html(result, plots))
        for test, drift in result.drift.items():
            if drift.drifted:
                context.log.warning(f"{name}: {test}: {drift.message}")
        drift = result.drift
        p95 = result.latency_ms["p95"]
        checks = [
            _drift_check("no_input_drift", [drift["input_drift"], drift["representation_drift"]], monitoring),
            _drift_check("no_prediction_drift", [drift["prediction_drift"]], monitoring),
            dg.AssetCheckResult(check_name="latency_within_slo", passed=p95 is None or p95 <= monitoring.latency_p95_slo_ms,
                                severity=_severity(monitoring.slo_severity),
                                metadata={"figure": "latency_p95_ms", "value": p95,
                                          "threshold": monitoring.latency_p95_slo_ms, "requests": result.requests}),
            dg.AssetCheckResult(check_name="error_rate_within_slo",
                                passed=result.server_error_rate <= monitoring.error_rate_slo,
                                severity=_severity(monitoring.slo_severity),
                                metadata={"figure": "server_error_rate", "value": result.server_error_rate,
                                          "threshold": monitoring.error_rate_slo, "requests": result.requests,
                                          "server_errors": result.server_errors, "errors": result.errors}),
        ]
        drift_rows = [{"test": test, "drifted": {True: "DRIFT", False: "no", None: "n/a"}[r.drifted],
                       "statistic": r.statistic if r.statistic is not None else "", "p_value":
                       r.p_value if r.p_value is not None else "", "moved most":
                       ", ".join(feature for feature, _ in r.top_features[:3]), "message": r.message}
                      for test, r in drift.items()]
        return dg.MaterializeResult(check_results=checks, metadata={
            "endpoint": name,
            "window": f"{window.start:%Y-%m-%d %H:%M} to {window.end:%H:%M} UTC",
            "requests": result.requests,
            "errors": result.errors,
            "server_errors": result.server_errors,
            "error_rate": result.error_rate,
            **{f"latency_{k}_ms": v for k, v in result.latency_ms.items() if v is not None},
            "model": f"{result.model_name} v{result.model_version}" if result.model_version else "none",
            "reference": result.reference_source,
            "drifted": str(result.drifted),
            "drift": dg.MetadataValue.md(markdown_table(drift_rows, list(drift_rows[0]))),
            **{f"plot_{key}": dg.MetadataValue.md(png_data_uri_markdown(png, key.replace("_", " ")))
               for key, png in plots.items()},
            "report_path": dg.MetadataValue.path(str(report)),
            "summary": dg.MetadataValue.json(result.to_json()),
            "monitoring_metrics_version": version,
            "dagster/row_count": result.requests,
        })

    return _monitoring


MONITORING_ASSETS = {task: monitoring_asset(task) for task in ENDPOINT_ASSETS}  # task -> <task>_endpoint_monitoring

monitoring_job = dg.define_asset_job(
    "monitor_endpoints", selection=dg.AssetSelection.assets(*MONITORING_ASSETS.values()),
    partitions_def=monitoring_windows,
    description="Monitor every endpoint over one hourly window of inference_log (health, drift, checks).")


def current_window_key(now: datetime | None = None) -> str:
    """The partition key of the window holding `now` (default: the current hour, UTC)."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return now.replace(minute=0, second=0, microsecond=0).strftime(monitoring_windows.fmt)
