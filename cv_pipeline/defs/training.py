"""Training: the pinned split manifest, then one model per task trained out of process through Pipes."""


import subprocess
from typing import Optional

import dagster as dg

from cv_pipeline import settings
from cv_pipeline.data.quality import ERROR, TRAINING_CHECK_DEFINITIONS
from cv_pipeline.defs.automation import retraining_condition, training_dataset_condition
from cv_pipeline.defs.ingestion import COCO_TABLES
from cv_pipeline.defs.launchers import JobLauncher
from cv_pipeline.defs.metadata import latest_metadata
from cv_pipeline.defs.resources import LakeResource, MLflowResource


class TrainingDatasetConfig(dg.Config):
    seed: int = 17
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    min_box_size: float = 4.0


@dg.asset(
    deps=[dg.AssetDep(name) for name in COCO_TABLES],
    group_name="training",
    kinds={"delta"},
    automation_condition=training_dataset_condition(),
    description="Deterministic train/val/test split of every trainable object of the validated batches (held-back "
                "batches are listed, not read), pinned to the Delta versions it read.",
    check_specs=[dg.AssetCheckSpec(definition.name, asset="training_dataset", blocking=definition.severity == ERROR,
                                   description=f"Great Expectations: {definition.description}")
                 for definition in TRAINING_CHECK_DEFINITIONS],
)
def training_dataset(context: dg.AssetExecutionContext, config: TrainingDatasetConfig,
                     lake: LakeResource) -> dg.MaterializeResult:
    from pathlib import Path

    from cv_pipeline.training.dataset import build_training_dataset

    manifest = build_training_dataset(
        Path(lake.lake_dir),
        seed=config.seed,
        fractions={"train": config.train_fraction, "val": config.val_fraction, "test": config.test_fraction},
        min_box_size=config.min_box_size,
    )
    for held in manifest.held_back_batches:
        context.log.warning(f"batch {held['batch_id']} held back from training_dataset: {held['message']}")
    from cv_pipeline.data.delta_io import read_table
    from cv_pipeline.data.quality import results_as_metadata, run_split_leakage_check

    leakage = run_split_leakage_check(read_table(manifest.table_path, version=manifest.version,
                                                 columns=["sha256", "split"]))
    check = dg.AssetCheckResult(
        check_name=leakage.name, passed=leakage.passed,
        severity=dg.AssetCheckSeverity.ERROR if leakage.severity == ERROR else dg.AssetCheckSeverity.WARN,
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, list) else v
                  for k, v in results_as_metadata(leakage).items()})
    return dg.MaterializeResult(check_results=[check], data_version=dg.DataVersion(manifest.content_hash), metadata={
        "delta_version": manifest.version,
        "path": dg.MetadataValue.path(manifest.table_path),
        "source_versions": dg.MetadataValue.json(manifest.source_versions),
        "split_objects": dg.MetadataValue.json(manifest.split_counts),
        "split_images": dg.MetadataValue.json(manifest.split_images),
        "dagster/row_count": sum(manifest.split_counts.values()),
        "num_classes": len(manifest.labels),
        "labels": dg.MetadataValue.json(manifest.labels),
        "dataset_hash": manifest.content_hash,
        "batches": dg.MetadataValue.json(manifest.batches),
        "held_back_batches": dg.MetadataValue.json(manifest.held_back_batches),
    })


class ModelTrainingConfig(dg.Config):
    """Training settings; unset values take the task's defaults (see cv_pipeline/models/builtin_tasks.py)."""

    profile: str = "full"  # the task's recipe: "full" (its defaults) or "quick" (a first run in minutes)
    arch: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    image_size: Optional[int] = None
    seed: int = 17
    num_workers: int = 1
    use_gpu: bool = False
    accumulate_grad_batches: int = 1
    early_stopping_patience: int = 0
    checkpoints_to_keep: int = 2
    max_failures: int = 1
    pretrained_weights: Optional[str] = None  # a local file, an earlier run's checkpoint directory, or an MLflow URI
    # start from the upstream model's weights where this asset has one (the segmentation models:
    # detection_model's backbone and FPN, and for instance segmentation its RPN and box head too);
    # unset: as the profile says (default yes); ignored when pretrained_weights is set
    init_from_upstream: Optional[bool] = None
    use_best_hpo_config: bool = False  # take the best config of the latest hpo_study of this task
    max_train_samples: Optional[int] = None  # smoke runs: the first N samples of each split
    max_val_samples: Optional[int] = None
    model_options: Optional[dict] = None  # keyword arguments of the model factory
    system_metrics_interval_s: float = 5.0  # MLflow system metrics (CPU, memory, GPU) sampling


def code_revision() -> str:
    """The git commit of the code that trains (`unknown` outside a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.REPO_ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_extras(context, task: str, config: dg.Config, lake: LakeResource, mlflow: MLflowResource,
                    training: dict) -> dict:
    """The Pipes extras of a training or tuning job: pinned dataset, MLflow, Ray storage, lineage."""
    dataset = latest_metadata(context, "training_dataset")
    return {
        "task": task,
        "profile": getattr(config, "profile", "full"),
        "dataset_path": lake.table_path("training_dataset"),
        "dataset_version": int(dataset["delta_version"]),
        "training": training,
        "num_workers": config.num_workers,
        "use_gpu": config.use_gpu,
        "mlflow_tracking_uri": mlflow.tracking_uri,
        "experiment_name": mlflow.experiment_name,
        "artifact_root": mlflow.artifact_root,
        "ray_storage_path": str(settings.ray_storage_dir()),
        "run_name": f"{task}-dagster-{context.run_id[:8]}",
        "lineage": {"code_revision": code_revision(), "dagster_run_id": context.run_id},
    }


def upstream_weights(context, upstream: dg.AssetKey) -> Optional[str]:
    """The MLflow URI of the upstream model asset's latest model, or None (with a warning) if it
    has not been materialized: the model then starts from random weights."""
    uri = latest_metadata(context, upstream, required=False).get("model_uri")
    if uri is None:
        context.log.warning(f"{upstream.to_user_string()} has no model yet: training from random weights")
    else:
        context.log.info(f"starting from {upstream.to_user_string()}'s model {uri}")
    return uri


def model_asset(task: str, init_from: Optional[str] = None):
    """The trained-model asset `<task>_model` of one task: its Pipes job trains on Ray and reports
    back. With `init_from` (another task), training starts from that task's latest model: tensors
    whose names and shapes match are loaded, the rest stay random (`init_from_upstream: false`
    turns it off)."""
    from cv_pipeline.models.tasks import get_task

    spec = get_task(task)
    upstream = dg.AssetKey(f"{init_from}_model") if init_from else None
    description = (f"{spec.description} Lightning on Ray Train, run as a Pipes job"
                   + (f"; may start from {init_from}_model's weights (the task's profile says)." if init_from else "."))

    @dg.asset(name=f"{task}_model", deps=[training_dataset, *([upstream] if upstream else [])], group_name="training",
              kinds={"pytorch", "ray", "mlflow"}, description=description, tags={"task": task},
              automation_condition=retraining_condition(task))
    def _model(context: dg.AssetExecutionContext, config: ModelTrainingConfig, lake: LakeResource,
               mlflow: MLflowResource, job_launcher: JobLauncher):
        recipe = get_task(task).recipe(config.profile)
        init_from_upstream = recipe.pop("init_from_upstream", True) if config.init_from_upstream is None \
            else config.init_from_upstream
        excluded = {"num_workers", "use_gpu", "use_best_hpo_config", "init_from_upstream", "profile"}
        training = {**recipe, **{k: v for k, v in config.model_dump(exclude=excluded).items() if v is not None}}
        if upstream is not None and init_from_upstream and config.pretrained_weights is None:
            uri = upstream_weights(context, upstream)
            if uri is not None:
                training["pretrained_weights"] = uri
        if config.use_best_hpo_config:
            from cv_pipeline.defs.tuning import best_hpo_config

            best = best_hpo_config(context, task)
            if best is None:
                raise dg.Failure(f"use_best_hpo_config is set but no hpo_study of task {task!r} has been materialized")
            context.log.info(f"taking the best config of hpo_study: {best}")
            training = {**training, **best}
        extras = training_extras(context, task, config, lake, mlflow, training)
        return job_launcher.run(context, "cv_pipeline.jobs.train", extras).get_materialize_result()

    return _model


def served_tasks() -> list[str]:
    """The code location's tasks: the built-in ones, then those the modules named in
    $CV_PIPELINE_TASK_MODULES register (a task registered elsewhere in the process is not one of
    them). Each gets the same road of assets, from `<task>_model` to `<task>_endpoint`."""
    from cv_pipeline.models.builtin_tasks import BUILTIN_TASKS
    from cv_pipeline.models.tasks import available_tasks, get_task, task_module, task_modules

    builtin = [spec.name for spec in BUILTIN_TASKS]
    configured = set(task_modules())
    return builtin + [name for name in available_tasks() if name not in builtin and get_task(name).servable
                      and task_module(get_task(name)) in configured]


def _model_assets() -> dict:
    from cv_pipeline.models.tasks import get_task

    return {task: model_asset(task, get_task(task).init_from_task) for task in served_tasks()}


MODEL_ASSETS = _model_assets()  # task -> its <task>_model asset
