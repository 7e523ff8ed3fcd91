"""Tuning: an optional hyperparameter study (Ray Tune + ASHA over RayTrainer) run as a Pipes job,
whose best config the training assets can take (`best_hpo_config`)."""

import json

import dagster as dg
from pydantic import Field, field_validator

from cv_pipeline.defs.launchers import JobLauncher
from cv_pipeline.defs.metadata import latest_metadata
from cv_pipeline.defs.resources import LakeResource, MLflowResource
from cv_pipeline.defs.training import training_dataset, training_extras

HPO_STUDY = "hpo_study"
DEFAULT_SEARCH_SPACE = json.dumps({"lr": {"loguniform": [3e-4, 3e-3]}, "weight_decay": {"loguniform": [1e-5, 1e-3]}})


def _json_object(value: str, what: str) -> dict:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not valid JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(parsed).__name__}")
    return parsed


class HPOStudyConfig(dg.Config):
    task: str = Field(default="classification", description="A registered task (classification, detection, ...).")
    arch: str | None = Field(default=None, description="Model architecture of the task (default: the task's default).")
    num_samples: int = Field(default=4, description="Trials to sample from the search space (a grid: repeats of it).")
    max_epochs: int = Field(default=3, description="Epochs of a trial that ASHA does not stop (ASHA's max_t).")
    grace_period: int = Field(default=1, description="Epochs every trial runs before ASHA may stop it.")
    reduction_factor: float = Field(default=2.0, description="ASHA keeps the best 1/reduction_factor at each rung.")
    search_space: str = Field(
        default=DEFAULT_SEARCH_SPACE,
        description='JSON: key -> {kind: args}, kinds uniform, quniform, loguniform, qloguniform, randint, '
                    'lograndint, choice, grid, value; plain values are fixed. e.g. '
                    '{"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [16, 32]}}')
    base_training: str = Field(default="{}", description="JSON: training config overrides every trial starts from "
                                                         '(e.g. {"image_size": 64}).')
    num_workers: int = Field(default=1, description="Ray Train workers per trial.")
    use_gpu: bool = False

    @field_validator("search_space")
    @classmethod
    def _valid_search_space(cls, value: str) -> str:
        from cv_pipeline.training.tuning import search_space_from_config

        search_space_from_config(_json_object(value, "search_space"))
        return value

    @field_validator("base_training")
    @classmethod
    def _valid_base_training(cls, value: str) -> str:
        _json_object(value, "base_training")
        return value


@dg.asset(
    deps=[training_dataset],
    group_name="tuning",
    kinds={"ray", "mlflow"},
    description="Hyperparameter study: Ray Tune trials (each a Ray Train run of RayTrainer) with ASHA early "
                "stopping on the task's validation metric, run as a Pipes job; the trials table and the best "
                "config go to metadata and MLflow (a parent run, a nested run per trial).",
)
def hpo_study(context: dg.AssetExecutionContext, config: HPOStudyConfig, lake: LakeResource, mlflow: MLflowResource,
              job_launcher: JobLauncher):
    training = _json_object(config.base_training, "base_training")
    extras = training_extras(context, config.task, config, lake, mlflow, training)  # pins the dataset version
    extras.pop("run_name", None)
    extras.update({
        "arch": config.arch,
        "search_space": _json_object(config.search_space, "search_space"),
        "num_samples": config.num_samples,
        "max_epochs": config.max_epochs,
        "grace_period": config.grace_period,
        "reduction_factor": config.reduction_factor,
        "study_name": f"hpo-{config.task}-{context.run_id[:8]}",
    })
    return job_launcher.run(context, "cv_pipeline.jobs.tune", extras).get_materialize_result()


def best_hpo_config(context, task: str) -> dict | None:
    """The best config of the latest `hpo_study` materialization when it tuned `task`, else None
    (no study yet, or the latest one tuned another task). Training assets merge it into their
    config when asked to (`use_best_hpo_config=True`)."""
    metadata = latest_metadata(context, HPO_STUDY, required=False)
    if metadata.get("task") != task or not isinstance(metadata.get("best_config"), dict):
        return None
    return dict(metadata["best_config"])
