"""Training: the pinned split manifest, then the classifier trained out of process through Pipes."""


import subprocess
import sys

import dagster as dg

from cv_pipeline import settings
from cv_pipeline.data.quality import ERROR, TRAINING_CHECK_DEFINITIONS
from cv_pipeline.defs.ingestion import COCO_TABLES
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
    description="Deterministic train/val/test split of every trainable object, pinned to the Delta versions it read.",
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
    from cv_pipeline.data.delta_io import read_table
    from cv_pipeline.data.quality import results_as_metadata, run_split_leakage_check

    leakage = run_split_leakage_check(read_table(manifest.table_path, version=manifest.version,
                                                 columns=["sha256", "split"]))
    check = dg.AssetCheckResult(
        check_name=leakage.name, passed=leakage.passed,
        severity=dg.AssetCheckSeverity.ERROR if leakage.severity == ERROR else dg.AssetCheckSeverity.WARN,
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, list) else v
                  for k, v in results_as_metadata(leakage).items()})
    return dg.MaterializeResult(check_results=[check], metadata={
        "delta_version": manifest.version,
        "path": dg.MetadataValue.path(manifest.table_path),
        "source_versions": dg.MetadataValue.json(manifest.source_versions),
        "split_objects": dg.MetadataValue.json(manifest.split_counts),
        "split_images": dg.MetadataValue.json(manifest.split_images),
        "dagster/row_count": sum(manifest.split_counts.values()),
        "num_classes": len(manifest.labels),
        "labels": dg.MetadataValue.json(manifest.labels),
        "dataset_hash": manifest.content_hash,
    })


class ClassifierTrainingConfig(dg.Config):
    arch: str = "resnet18"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    image_size: int = 64
    seed: int = 17
    num_workers: int = 1
    use_gpu: bool = False
    early_stopping_patience: int = 0
    pretrained_weights: str | None = None


def code_revision() -> str:
    """The git commit of the code that trains (`unknown` outside a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.REPO_ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dg.asset(
    deps=[training_dataset],
    group_name="training",
    kinds={"pytorch", "ray", "mlflow"},
    description="Image classifier on object crops: Lightning inside Ray Train, run as a Pipes job.",
)
def classifier_model(context: dg.AssetExecutionContext, config: ClassifierTrainingConfig, lake: LakeResource,
                     mlflow: MLflowResource, pipes_subprocess_client: dg.PipesSubprocessClient):
    from cv_pipeline.defs.metadata import latest_metadata

    dataset = latest_metadata(context, "training_dataset")
    training = config.model_dump(exclude={"num_workers", "use_gpu"})
    return pipes_subprocess_client.run(
        command=[sys.executable, "-m", "cv_pipeline.jobs.train_classifier"],
        context=context,
        extras={
            "dataset_path": lake.table_path("training_dataset"),
            "dataset_version": int(dataset["delta_version"]),
            "training": training,
            "num_workers": config.num_workers,
            "use_gpu": config.use_gpu,
            "mlflow_tracking_uri": mlflow.tracking_uri,
            "experiment_name": mlflow.experiment_name,
            "artifact_root": mlflow.artifact_root,
            "ray_storage_path": str(settings.ray_storage_dir()),
            "run_name": f"dagster-{context.run_id[:8]}",
            "lineage": {"code_revision": code_revision(), "dagster_run_id": context.run_id},
        },
    ).get_materialize_result()
