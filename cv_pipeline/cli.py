"""`cv-pipeline`: run the whole graph (or only ingestion) on the landing zone and print a summary."""

from __future__ import annotations

import argparse
import os
import sys
import time


INSTANCE_CONFIG = """\
# Written by cv-pipeline: SQLite storage in this folder; one run at a time, since every run
# starts Spark or Ray and a laptop has few cores.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 1
"""


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


def ingest_batches(defs, instance, batches: list[str]) -> dict[str, dict]:
    """Register every batch as a partition and run the ingestion job for it; one summary per batch."""
    from cv_pipeline.defs.partitions import landing_batches

    known = set(instance.get_dynamic_partitions(landing_batches.name))
    new = [b for b in batches if b not in known]
    if new:
        instance.add_dynamic_partitions(landing_batches.name, new)
    job = defs.resolve_job_def("ingest_batch")
    outcomes = {}
    for batch in batches:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=batch, raise_on_error=False)
        checks = [(e.asset_key.to_user_string(), e.check_name, e.passed, e.severity.value)
                  for e in result.get_asset_check_evaluations()]
        materialized = materialized_metadata(result)
        failure = None
        if not result.success:
            failures = step_failures(result)
            failure = failures[0] if failures else "run failed"
        outcomes[batch] = {"success": result.success, "checks": checks, "materialized": materialized,
                           "failure": failure, "seconds": time.perf_counter() - started}
    return outcomes


def print_ingestion(outcomes: dict[str, dict]) -> None:
    """Per batch: records read, accepted and quarantined (by type and by reason), and the failed checks."""
    for batch, outcome in outcomes.items():
        status = "ok" if outcome["success"] else "FAILED"
        print(f"\nbatch {batch}: {status} ({outcome['seconds']:.1f}s)")
        images = outcome["materialized"].get("coco_images", {})
        if images:
            read, accepted, quarantined = images.get("records_read"), images.get("accepted"), images.get("quarantined")
            print(f"  {'':12s}{'read':>8s}{'accepted':>10s}{'quarantined':>13s}")
            for kind in ("images", "annotations", "categories"):
                print(f"  {kind:12s}{read[kind]:>8d}{accepted[kind]:>10d}{quarantined[kind]:>13d}")
            reasons = outcome["materialized"].get("coco_quarantine", {}).get("quarantined_by_reason") or {}
            if reasons:
                print("  quarantined by reason: " + ", ".join(f"{code} {count}" for code, count in reasons.items()))
        failed = [f"{table}:{name} ({severity})" for table, name, passed, severity in outcome["checks"] if not passed]
        print(f"  checks      {len(outcome['checks']) - len(failed)}/{len(outcome['checks'])} passed"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
        if outcome["failure"]:
            print(f"  error       {outcome['failure'][:500]}")


def print_tables() -> None:
    from cv_pipeline import settings
    from cv_pipeline.data.delta_io import is_delta_table

    print("\nDelta tables")
    for name in ("coco_images", "coco_annotations", "coco_categories", "coco_quarantine", "coco_batches",
                 "coco_quality_metrics", "training_dataset"):
        path = settings.table_path(name)
        if not is_delta_table(path):
            print(f"  {name:20s} (not written)")
            continue
        from deltalake import DeltaTable

        table = DeltaTable(path)
        rows = table.to_pyarrow_dataset().count_rows()
        print(f"  {name:20s} rows={rows:<6d} version={table.version():<3d} {path}")


VISION_MODELS = ("detection_model", "instance_segmentation_model", "semantic_segmentation_model")
VISION_EVALUATIONS = tuple(name.replace("_model", "_evaluation") for name in VISION_MODELS)
KEEP_CHECK = "challenger_beats_champion"


def training_run_config(epochs: int | None, vision_epochs: int | None, max_samples: int | None) -> dict:
    """Run config of train_and_deploy: `epochs` for the classifier, `vision_epochs` and `max_samples`
    (per split, for training and evaluation) for the detection and segmentation models; unset values
    keep each task's defaults."""
    ops = {}
    if epochs:
        ops["classifier_model"] = {"config": {"epochs": epochs}}
    vision = {key: value for key, value in (("epochs", vision_epochs), ("max_train_samples", max_samples),
                                             ("max_val_samples", max_samples)) if value}
    for name in VISION_MODELS if vision else ():
        ops[name] = {"config": vision}
    for name in VISION_EVALUATIONS if max_samples else ():
        ops[name] = {"config": {"max_images": max_samples}}
    return {"ops": ops}


def run_training(defs, instance, epochs: int | None, vision_epochs: int | None = None,
                 max_samples: int | None = None) -> bool:
    result = defs.resolve_job_def("train_and_deploy").execute_in_process(
        instance=instance, run_config=training_run_config(epochs, vision_epochs, max_samples), raise_on_error=False)
    meta = materialized_metadata(result)
    checks = result.get_asset_check_evaluations()
    dataset = meta.get("training_dataset", {})
    if dataset:
        print(f"\ntraining_dataset   version {dataset['delta_version']} splits {dataset['split_objects']} "
              f"from {dataset['source_versions']}")
    model = meta.get("classifier_model", {})
    if model:
        print(f"classifier_model   MLflow run {model['mlflow_run_id']} val_acc={model['val_acc']:.3f} "
              f"best epoch={model['best_epoch']}")
    for name in VISION_MODELS:
        vision = meta.get(name, {})
        if vision:
            monitor = vision["monitor"]
            print(f"{name:<18s} MLflow run {vision['mlflow_run_id']} {vision['arch']} {monitor}="
                  f"{vision.get(monitor, float('nan')):.3f} best epoch={vision['best_epoch']}"
                  + (f" from {vision['pretrained_weights']}" if vision.get("pretrained_weights") else ""))
    evaluation = meta.get("classifier_evaluation", {})
    if evaluation:
        print(f"evaluation (test)  accuracy={evaluation['accuracy']:.3f} macro_f1={evaluation['macro_f1']:.3f} "
              f"on {evaluation['test_objects']} objects")
    for name in VISION_EVALUATIONS:
        vision = meta.get(name, {})
        if vision:
            primary = vision["primary_metric"]
            print(f"{name:<18s} {primary}={vision[primary]:.3f} on {int(vision['num_images'])} test images, "
                  f"report {vision['report_path']}")
    registered = meta.get("registered_classifier", {})
    if registered:
        print(f"registered model   {registered['model_name']} version {registered['version']} alias challenger")
    comparison = meta.get("model_comparison", {})
    if comparison:
        print(f"model_comparison   {comparison['decision']}: {comparison['reason']}")
    for check in checks:
        print(f"check              {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    champion = meta.get("champion_classifier", {})
    if champion:
        print(f"champion           {champion['model_name']} version {champion['version']} "
              f"(previous: {champion['previous_champion']})")
    serving = meta.get("serving_endpoint", {})
    if serving:
        print(f"serving            {serving['invocations_url']} (pid {serving['pid']})")
        print(f"sample prediction  {serving['sample_response']} for {serving['sample_image']} "
              f"(truth: {serving['sample_ground_truth']})")
    if comparison.get("decision") == "keep" and not _failures_besides(result, KEEP_CHECK):
        print("\nthe champion stays: the challenger did not clear the promotion rule (not an error)")
        return True
    if not result.success:
        failures = step_failures(result)
        print("\ntraining run FAILED: " + (failures[0][:1000] if failures else "see the Dagster run log"))
    return result.success


def _failures_besides(result, check_name: str) -> list[str]:
    """Failed steps other than the blocking check `check_name` (whose failure is a decision)."""
    return [message for message in step_failures(result) if check_name not in message.split(":", 1)[0]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cv-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ingest every landed batch, then train, evaluate, register and serve")
    run.add_argument("--epochs", type=int, default=None, help="override the classifier's training epochs")
    run.add_argument("--vision-epochs", type=int, default=None,
                     help="override the detection and segmentation models' training epochs")
    run.add_argument("--max-samples", type=int, default=None,
                     help="train the detection and segmentation models on the first N images of each split (smoke runs)")
    sub.add_parser("ingest", help="ingest every landed batch and run its quality checks only")
    args = parser.parse_args(argv)

    from cv_pipeline import settings
    from cv_pipeline.data.processor import find_complete_batches

    instance = _instance()
    from cv_pipeline.definitions import defs

    landing = settings.landing_dir()
    batches = find_complete_batches(landing)
    print(f"CV_PIPELINE_HOME   {settings.cv_pipeline_home()}")
    print(f"landing zone       {landing}: {len(batches)} complete batches {batches}")
    print(f"DAGSTER_HOME       {os.environ['DAGSTER_HOME']}")
    if not batches:
        print("nothing to ingest: a batch is a folder with annotations.json, images/ and a _SUCCESS marker")
        return 1
    outcomes = ingest_batches(defs, instance, batches)
    print_ingestion(outcomes)
    ok = all(outcome["success"] for outcome in outcomes.values())
    if args.command == "ingest":
        print_tables()
        return 0 if ok else 1
    if not ok:
        print_tables()
        print("\nnot training: an ingestion run failed (a blocking quality check or an unreadable batch)")
        return 1
    trained = run_training(defs, instance, args.epochs, args.vision_epochs, args.max_samples)
    print_tables()
    print(f"\nMLflow             {settings.mlflow_tracking_uri()}")
    return 0 if trained else 1


if __name__ == "__main__":
    sys.exit(main())
