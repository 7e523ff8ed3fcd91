"""`cv-pipeline`: run the whole graph (or only ingestion) on the landing zone and print a summary.

A run prints one line per step as it starts and ends, a progress bar per training run (on a
terminal), warnings and errors in full, then the summary; the full log (Dagster's event stream,
Spark, Ray, the training jobs) goes to `$CV_PIPELINE_HOME/logs/`, whose path the summary gives.
`-v` puts the full stream on the console instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

INSTANCE_CONFIG = """\
# Written by cv-pipeline: SQLite storage in this folder; one run at a time, since every run
# starts Spark or Ray and a laptop has few cores.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 1
"""

PROFILES = ("quick", "full")
TABLES = ("coco_images", "coco_annotations", "coco_categories", "coco_quarantine", "coco_batches",
          "coco_quality_metrics", "training_dataset", "evaluation_per_image", "evaluation_per_class",
          "inference_log", "predictions", "monitoring_metrics", "champion_quality")


def ensure_instance_config() -> str:
    """DAGSTER_HOME (default $CV_PIPELINE_HOME/dagster_home) with a dagster.yaml; returns its path."""
    from cv_pipeline import settings

    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home()))
    home = os.environ["DAGSTER_HOME"]
    os.makedirs(home, exist_ok=True)
    config = os.path.join(home, "dagster.yaml")
    if not os.path.exists(config):
        with open(config, "w") as handle:
            handle.write(INSTANCE_CONFIG)
    return home


def _instance():
    from dagster import DagsterInstance

    ensure_instance_config()
    return DagsterInstance.get()


def step_failures(result) -> list[str]:
    """The root-cause message of each failed step of an in-process run."""
    messages = []
    for event in result.all_events:
        data = event.event_specific_data if event.is_step_failure else None
        if data is not None and getattr(data, "user_failure_data", None) and data.user_failure_data.description:
            messages.append(f"{event.step_key}: {data.user_failure_data.description.strip()}")  # a dg.Failure
        elif data is not None and data.error:
            error = data.error
            while error.cause is not None:
                error = error.cause
            messages.append(f"{event.step_key}: {error.message.strip()}")
    return messages


def materialized_metadata(result) -> dict[str, dict]:
    """Plain metadata values of each asset an in-process run materialized, by asset name."""
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def ingest_batches(defs, instance, batches: list[str], console) -> dict[str, dict]:
    """Register every batch as a partition and run the ingestion job for it; one outcome per batch."""
    from cv_pipeline.defs.partitions import landing_batches

    known = set(instance.get_dynamic_partitions(landing_batches.name))
    new = [b for b in batches if b not in known]
    if new:
        instance.add_dynamic_partitions(landing_batches.name, new)
    job = defs.resolve_job_def("ingest_batch").with_logger_defs(console.logger_defs())
    outcomes = {}
    for batch in batches:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=batch, raise_on_error=False,
                                        run_config=console.run_config())
        checks = [(e.asset_key.to_user_string(), e.check_name, e.passed, e.severity.value)
                  for e in result.get_asset_check_evaluations()]
        failures = [] if result.success else step_failures(result)
        outcomes[batch] = {"success": result.success, "checks": checks, "materialized": materialized_metadata(result),
                           "failure": (failures[0] if failures else "run failed") if not result.success else None,
                           "seconds": time.perf_counter() - started}
    return outcomes


def blocking_failures(outcome: dict) -> list[str]:
    return [name for _table, name, passed, severity in outcome["checks"] if not passed and severity == "ERROR"]


def print_ingestion(console, outcomes: dict[str, dict]) -> None:
    """One block: per batch, records read / accepted / quarantined and the checks."""
    console.print("\nIngestion (records read / accepted / quarantined; checks passed)")
    for batch, outcome in outcomes.items():
        images = outcome["materialized"].get("coco_images", {})
        counts = ""
        if images:
            read, accepted, quarantined = images["records_read"], images["accepted"], images["quarantined"]
            counts = "  ".join(f"{kind} {read[kind]}/{accepted[kind]}/{quarantined[kind]}"
                               for kind in ("images", "annotations", "categories"))
        passed = sum(1 for check in outcome["checks"] if check[2])
        blocking = blocking_failures(outcome)
        status = "validated" if outcome["success"] and not blocking else "HELD BACK" if outcome["checks"] else "FAILED"
        console.print(f"  {batch:14s} {status:9s} {counts}  checks {passed}/{len(outcome['checks'])}")
        reasons = outcome["materialized"].get("coco_quarantine", {}).get("quarantined_by_reason") or {}
        if reasons:
            console.print("                 quarantined: " + ", ".join(f"{code} {n}" for code, n in reasons.items()))
        if blocking:
            console.print(f"                 held back by blocking checks: {', '.join(blocking)}")
        elif outcome["failure"]:
            console.print(f"                 error: {outcome['failure'][:500]}")


def per_task(value: str | None, what: str) -> dict[str, int]:
    """`N` (every task) or `task=N,task=N` (those tasks) from the command line, as {task: N}
    (`*` for every task)."""
    if not value:
        return {}
    try:
        if "=" not in value:
            return {"*": int(value)}
        return {task.strip(): int(n) for task, _, n in (part.partition("=") for part in value.split(",") if part)}
    except ValueError:
        raise SystemExit(f"cv-pipeline: {what} takes N or task=N[,task=N...], got {value!r}") from None


def training_run_config(profile: str, epochs: str | None = None, max_samples: str | None = None) -> dict:
    """Run config of train_and_deploy: the profile for every model asset; `epochs` and
    `max_samples` (per split, training and evaluation; smoke runs) for every task or the tasks
    named; unset values keep the profile's recipe."""
    from cv_pipeline.defs.training import MODEL_ASSETS

    epochs_of, samples_of = per_task(epochs, "--epochs"), per_task(max_samples, "--max-samples")
    unknown = sorted((set(epochs_of) | set(samples_of)) - {"*", *MODEL_ASSETS})
    if unknown:
        raise SystemExit(f"cv-pipeline: unknown task {unknown[0]!r}; choose among {sorted(MODEL_ASSETS)}")
    ops = {}
    for task in MODEL_ASSETS:
        config = {"profile": profile}
        n_epochs, n_samples = epochs_of.get(task, epochs_of.get("*")), samples_of.get(task, samples_of.get("*"))
        if n_epochs:
            config["epochs"] = n_epochs
        if n_samples:
            config.update(max_train_samples=n_samples, max_val_samples=n_samples)
            ops[f"{task}_evaluation"] = {"config": {"max_images": n_samples}}
        ops[f"{task}_model"] = {"config": config}
    return {"ops": ops}


def print_models(console, meta: dict[str, dict]) -> None:
    """Per trained model: task, architecture, test metric beside the goals of its profile and the full recipe."""
    from cv_pipeline.models.tasks import FULL_PROFILE, get_task

    evaluations = {m.get("mlflow_run_id"): m for name, m in meta.items() if "primary_metric" in m}
    rows = [(name, m) for name, m in meta.items() if "monitor" in m and "task" in m]
    if not rows:
        return
    console.print(f"\n{'model':30s}{'task':32s}{'test metric':20s}{'goal':>6s}{'full':>6s}  MLflow run")
    for name, model in rows:
        spec = get_task(model["task"])
        profile = model.get("profile", FULL_PROFILE)
        evaluation = evaluations.get(model["mlflow_run_id"], {})
        primary = evaluation.get("primary_metric")
        metric = f"{primary} {evaluation[primary]:.3f}" if primary else "(not evaluated)"
        goal = spec.goals.get(profile)
        full = spec.goals.get(FULL_PROFILE)
        verdict = "" if goal is None or not primary else ("  ok" if evaluation[primary] >= goal else "  BELOW GOAL")
        console.print(f"{name:30s}{model['task'] + ' (' + profile + ')':32s}{metric:20s}"
                      f"{goal if goal is not None else '':>6}{full if full is not None else '':>6}  "
                      f"{model['mlflow_run_id'][:12]} {model['arch']}{verdict}")


def print_deployment(console, meta: dict[str, dict]) -> None:
    """Per task: the registered version, the comparison's decision and interval, the champion, the
    endpoint's URL and its answer to one test image."""
    from cv_pipeline.defs.training import MODEL_ASSETS

    lines = []
    for task in MODEL_ASSETS:
        registered, comparison = meta.get(f"{task}_registered_model"), meta.get(f"{task}_comparison", {})
        champion, endpoint = meta.get(f"{task}_champion", {}), meta.get(f"{task}_endpoint", {})
        if not registered:
            continue
        interval = (f" [{comparison['interval_low']:+.3f}, {comparison['interval_high']:+.3f}]"
                    if "interval_low" in comparison else "")
        lines.append(f"  {task:22s} {registered['model_name']} v{registered['version']} (challenger): "
                     f"{comparison.get('decision', '?')}{interval}; champion v{champion.get('version', 'none')}")
        if comparison.get("reason"):
            lines.append(f"  {'':22s} {comparison['reason']}")
        if endpoint:
            lines.append(f"  {'':22s} {endpoint['invocations_url']}  {endpoint['routes']}")
            lines.append(f"  {'':22s} answered {endpoint['sample_summary']} for {endpoint['sample_image']}")
    if lines:
        console.print("\nregistry and endpoints (registered version: decision [interval of the difference])")
        for line in lines:
            console.print(line)


def run_training(defs, instance, console, run_config: dict) -> bool:
    job = defs.resolve_job_def("train_and_deploy").with_logger_defs(console.logger_defs())
    result = job.execute_in_process(instance=instance, run_config=console.run_config(run_config), raise_on_error=False)
    meta = materialized_metadata(result)
    dataset = meta.get("training_dataset", {})
    if dataset:
        console.print(f"\ntraining_dataset   version {dataset['delta_version']}, objects per split "
                      f"{dataset['split_objects']}, from {dataset['source_versions']}")
    print_models(console, meta)
    print_deployment(console, meta)
    if not result.success:
        failures = step_failures(result)
        console.print("\ntraining run FAILED: " + (failures[0][:2000] if failures else "see the log file"))
    return result.success


def score_batches(defs, instance, console, batches: list[str]) -> bool:
    """batch_predictions for each batch (the score_batch job, one partition each), with the champions."""
    job = defs.resolve_job_def("score_batch").with_logger_defs(console.logger_defs())
    ok = True
    for batch in batches:
        result = job.execute_in_process(instance=instance, partition_key=batch, raise_on_error=False,
                                        run_config=console.run_config())
        meta = materialized_metadata(result).get("batch_predictions", {})
        if result.success:
            console.print(f"batch_predictions  {batch}: {meta.get('dagster/row_count')} rows by {meta.get('models')}")
        else:
            failures = step_failures(result)
            console.print(f"batch_predictions  {batch} FAILED: {(failures[0] if failures else 'see the log')[:1000]}")
            ok = False
    return ok


def send_test_traffic(console, instance, max_images: int = 64, rows_per_request: int = 8) -> int:
    """Ask every endpoint about the test split's samples (its task's, at most `max_images`), as a
    client would: what the monitoring pass then watches. Returns the number of requests sent."""
    from cv_pipeline import settings
    from cv_pipeline.deployment.endpoints import invoke, list_endpoints
    from cv_pipeline.models.tasks import get_task
    from cv_pipeline.training.dataset import load_manifest

    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("training_dataset"))
    if event is None:
        return 0
    version = int(event.asset_materialization.metadata["delta_version"].value)
    manifest = load_manifest(settings.table_path("training_dataset"), version)
    prefix, sent = f"test-traffic-{uuid.uuid4().hex[:8]}", 0
    for endpoint in list_endpoints(settings.serving_dir()):
        if endpoint["url"] is None:
            continue
        images = get_task(endpoint["task"]).evaluation_samples(manifest, "test", max_images).images
        for start in range(0, len(images), rows_per_request):
            invoke(endpoint["url"], images[start:start + rows_per_request], client_request_id=f"{prefix}-{sent}")
            sent += 1
        console.print(f"traffic            {endpoint['name']}: {len(images)} test-split inputs in "
                      f"{-(-len(images) // rows_per_request)} requests")
    wait_for_inference_log([f"{prefix}-{k}" for k in range(sent)])
    return sent


def wait_for_inference_log(client_request_ids: list[str], timeout_s: float = 30.0) -> bool:
    """Wait until the server's log writer has committed these requests to inference_log (it flushes
    every few seconds), so that a monitoring pass right after sees them all."""
    import pyarrow.compute as pc

    from cv_pipeline import settings
    from cv_pipeline.data.delta_io import is_delta_table, read_table

    path, wanted = settings.table_path("inference_log"), set(client_request_ids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_delta_table(path):
            logged = read_table(path, columns=["client_request_id"],
                                filters=pc.field("client_request_id").isin(list(wanted))).num_rows
            if logged >= len(wanted):
                return True
        time.sleep(0.5)
    return False


def run_monitoring(defs, instance, console, window: str | None = None) -> tuple[bool, list[dict]]:
    """The monitor_endpoints job over one window (default: the current hour); each endpoint's summary."""
    from cv_pipeline.defs.monitoring import current_window_key

    window = window or current_window_key()
    job = defs.resolve_job_def("monitor_endpoints").with_logger_defs(console.logger_defs())
    result = job.execute_in_process(instance=instance, partition_key=window, raise_on_error=False,
                                    run_config=console.run_config())
    summaries = [meta["summary"] for meta in materialized_metadata(result).values() if "summary" in meta]
    if not result.success:
        failures = step_failures(result)
        console.print("monitoring FAILED: " + (failures[0][:2000] if failures else "see the log file"))
    return result.success, summaries


def print_monitoring(console, summaries: list[dict], compact: bool = False) -> None:
    from cv_pipeline.monitoring.endpoint_health import format_windows

    if summaries:
        console.print("\nmonitoring (this window of inference_log against each champion's training split"
                      + ("; cv-pipeline monitor for the details)" if compact else ")"))
        console.print(format_windows(summaries, compact=compact))


def monitor_command(args) -> int:
    """`cv-pipeline monitor`: the monitoring pass of the current window, as a table or (`--json`)
    a JSON list on stdout; step lines and the run's log go where `cv-pipeline run` puts them."""
    import json

    from cv_pipeline import settings
    from cv_pipeline.console import run_console

    instance = _instance()
    from cv_pipeline.definitions import defs

    log_path = settings.logs_dir() / f"monitor-{datetime.now():%Y%m%d-%H%M%S}.log"
    with run_console(log_path, verbose=args.verbose and not args.json) as console:
        if args.json:  # stdout carries the JSON alone
            console.stream = open(os.devnull, "w")
        ok, summaries = run_monitoring(defs, instance, console, args.window)
        if not args.json:
            print_monitoring(console, summaries)
            console.print(f"full log           {log_path}")
    if args.json:
        print(json.dumps(summaries, indent=2))
    return 0 if ok else 1


def print_tables(console) -> None:
    from cv_pipeline import settings
    from cv_pipeline.data.delta_io import is_delta_table

    console.print(f"\nDelta tables under {settings.lake_dir()} (rows, version)")
    written = []
    for name in TABLES:
        path = settings.table_path(name)
        if is_delta_table(path):
            from deltalake import DeltaTable

            table = DeltaTable(path)
            written.append(f"{name} {table.to_pyarrow_dataset().count_rows()} v{table.version()}")
    for start in range(0, len(written), 3):
        console.print("  " + "   ".join(f"{entry:30s}" for entry in written[start:start + 3]).rstrip())


def run_dev(dagster_args: list[str]) -> int:
    """`dagster dev -w workspace.yaml` with DAGSTER_HOME under CV_PIPELINE_HOME; the Ray cluster
    started here stays up while it runs, and every training or tuning job attaches to it."""
    import subprocess

    from cv_pipeline import settings
    from cv_pipeline.training.ray_cluster import shared_local_ray

    ensure_instance_config()
    workspace = settings.REPO_ROOT / "workspace.yaml"
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(workspace), *dagster_args]
    with shared_local_ray() as address:
        print(f"Ray cluster {address} shared by every job; DAGSTER_HOME {os.environ['DAGSTER_HOME']}", flush=True)
        process = subprocess.Popen(command, cwd=settings.REPO_ROOT)
        try:
            return process.wait()
        except KeyboardInterrupt:  # dagster dev got the same Ctrl-C: let it shut down first
            return process.wait()


def print_endpoints(as_json: bool) -> int:
    """`cv-pipeline endpoints`: every endpoint under $CV_PIPELINE_HOME/serving, as a table or JSON."""
    import json

    from cv_pipeline import settings
    from cv_pipeline.deployment.endpoints import format_endpoints, list_endpoints

    endpoints = list_endpoints(settings.serving_dir())
    print(json.dumps(endpoints, indent=2) if as_json else format_endpoints(endpoints))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cv-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ingest every landed batch, then train, evaluate, register and serve")
    run.add_argument("--profile", choices=PROFILES, default="quick",
                     help="training recipes: quick (default, a first run in minutes) or full (each task's "
                          "defaults, the recipes its quality goals are measured with)")
    run.add_argument("--epochs", default=None, metavar="N|TASK=N,...",
                     help="override the training epochs of every model (N) or of the tasks named")
    run.add_argument("--max-samples", default=None, metavar="N|TASK=N,...",
                     help="train and evaluate on the first N samples of each split (smoke runs), for every task "
                          "or the tasks named")
    run.add_argument("--score-batches", action="store_true",
                     help="then score every validated batch with each task's champion into the predictions table "
                          "(batch_predictions; under `make dev` the retraining flow does it for each new batch)")
    ingest = sub.add_parser("ingest", help="ingest every landed batch and run its quality checks only")
    for command in (run, ingest):
        command.add_argument("-v", "--verbose", action="store_true",
                             help="the full log (Dagster events, Spark, Ray, jobs) on the console")
    dev = sub.add_parser("dev", help="`dagster dev` on this code location, with one local Ray cluster kept up for "
                                     "every job it runs")
    dev.add_argument("dagster_args", nargs=argparse.REMAINDER, help="passed on to `dagster dev`")
    monitor = sub.add_parser("monitor", help="monitor every endpoint over the current window of inference_log: "
                                             "requests, errors, latency percentiles, drift verdicts")
    monitor.add_argument("--json", action="store_true", help="a JSON list, one object per endpoint")
    monitor.add_argument("--window", default=None, metavar="YYYY-MM-DD-HH:00",
                         help="an hourly window (UTC) other than the current one")
    monitor.add_argument("-v", "--verbose", action="store_true", help="the full log on the console")
    endpoints = sub.add_parser("endpoints", help="list the serving endpoints: task, invocations URL, served model "
                                                 "versions and their traffic")
    endpoints.add_argument("--json", action="store_true", help="a JSON list of endpoint objects")
    lineage = sub.add_parser("lineage", help="trace a prediction (request id) or a model version (name:version) "
                                             "back to its MLflow run, training_dataset, COCO table versions, "
                                             "batches and code revision")
    lineage.add_argument("ref", help="a request id (databricks_request_id or client_request_id of inference_log), "
                                     "name:version, models:/name/version or name@alias")
    lineage.add_argument("--json", action="store_true", help="the chain as JSON")
    lineage.add_argument("--rebuild", metavar="DIR", default=None,
                         help="rebuild that training split into DIR by Delta time travel and check its hash")
    args = parser.parse_args(argv)
    if args.command == "dev":
        return run_dev(args.dagster_args)
    if args.command == "endpoints":
        return print_endpoints(args.json)
    if args.command == "monitor":
        return monitor_command(args)
    if args.command == "lineage":
        from cv_pipeline.deployment.lineage import lineage_command

        return lineage_command(args.ref, as_json=args.json, rebuild_dir=args.rebuild)

    from cv_pipeline import settings
    from cv_pipeline.console import run_console

    log_path = settings.logs_dir() / f"{args.command}-{datetime.now():%Y%m%d-%H%M%S}.log"
    started = time.perf_counter()
    with run_console(log_path, verbose=args.verbose) as console:
        code = _run(args, console, settings)
        console.print(f"\nMLflow             {settings.mlflow_tracking_uri()}")
        console.print(f"DAGSTER_HOME       {os.environ['DAGSTER_HOME']}   (make dev: the Dagster UI on it)")
        console.print(f"full log           {log_path}")
        console.print(f"{'done' if code == 0 else 'FAILED'} in {time.perf_counter() - started:.0f}s")
    return code


def _run(args, console, settings) -> int:
    from cv_pipeline.data.processor import find_complete_batches

    landing = settings.landing_dir()
    batches = find_complete_batches(landing)
    console.print(f"cv-pipeline {args.command}: {len(batches)} complete batches in {landing}; "
                  f"state in {settings.cv_pipeline_home()}")
    if not batches:
        console.print("nothing to ingest: a batch is a folder with annotations.json, images/ and a _SUCCESS marker")
        return 1
    instance = _instance()
    from cv_pipeline.definitions import defs
    from cv_pipeline.training.ray_cluster import shared_local_ray

    from cv_pipeline.data.quality import batch_gate

    outcomes = ingest_batches(defs, instance, batches, console)
    print_ingestion(console, outcomes)
    gate = batch_gate(settings.lake_dir())  # the quality gate's word on every batch in the lake
    eligible = gate.eligible or []
    for held in gate.held_back:
        console.print(f"held back          {held.batch_id}: {held.message}")
    if args.command == "ingest":
        print_tables(console)
        return 0 if all(outcome["success"] for outcome in outcomes.values()) else 1
    if not eligible:
        print_tables(console)
        console.print("\nnot training: no batch passed ingestion and its blocking quality checks")
        return 1
    console.print(f"\ntraining on {len(eligible)} validated batches ({', '.join(eligible)}), profile {args.profile}")
    with shared_local_ray():
        trained = run_training(defs, instance, console, training_run_config(
            args.profile, args.epochs, args.max_samples))
    if trained and args.score_batches:
        console.print("")
        trained = score_batches(defs, instance, console, eligible)
    if trained:
        console.print("")
        send_test_traffic(console, instance)
        monitored, summaries = run_monitoring(defs, instance, console)
        print_monitoring(console, summaries, compact=True)
        trained = monitored
    print_tables(console)
    return 0 if trained else 1


if __name__ == "__main__":
    sys.exit(main())
