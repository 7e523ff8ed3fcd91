"""Hyperparameter tuning for real: the JSON search space, a Ray Tune study with ASHA over RayTrainer
(Train V2: a Tune driver function per trial running a TorchTrainer) on the sample lake, what MLflow
records (a parent run with the trials table and best config, a nested run per trial), and the
`hpo_study` asset running the `cv_pipeline.jobs.tune` Pipes job.

Why a grid in the study test: with trials run one at a time, ASHA's first trial meets an empty rung
and always continues; a later trial is stopped at rung 1 only if its epoch-1 metric is below the
median of those recorded there. With sampled configs that depends on the draw and on the order of
the trials. A grid fixes both: a good learning rate first, then two that barely move the weights
(their epoch-1 accuracy is that of the seeded initial model, far below one epoch at lr=1e-3), so
ASHA must stop both after their first epoch.
"""

import json
import shutil

import dagster as dg
import mlflow
import pytest
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer

from cv_pipeline.training.tuning import search_space_from_config, searched_keys

TINY = {"image_size": 32, "batch_size": 16}


# ------------------------------------------------------------------------ search space


def test_search_space_from_config_builds_tune_domains():
    space = search_space_from_config({
        "lr": {"loguniform": [1e-4, 1e-2]},
        "batch_size": {"choice": [8, 16]},
        "weight_decay": {"uniform": [0, 1e-3]},
        "accumulate_grad_batches": {"randint": [1, 4]},
        "warmup_epochs": {"quniform": [0, 2, 0.5]},
        "seed": {"grid": [1, 2]},
        "model_options": {"value": {"dropout": 0.1}},
        "epochs": 3,
        "optimizer": "adamw",
        "gradient_clip_val": None,
    })
    assert isinstance(space["lr"], Float) and (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-2)
    assert type(space["lr"].get_sampler()).__name__.strip("_") == "LogUniform"
    assert isinstance(space["batch_size"], Categorical) and space["batch_size"].categories == [8, 16]
    assert isinstance(space["weight_decay"], Float) and space["weight_decay"].upper == 1e-3
    assert isinstance(space["accumulate_grad_batches"], Integer)
    assert space["seed"] == tune.grid_search([1, 2])
    assert space["model_options"] == {"dropout": 0.1}
    assert (space["epochs"], space["optimizer"], space["gradient_clip_val"]) == (3, "adamw", None)
    assert searched_keys(space) == ["lr", "batch_size", "weight_decay", "accumulate_grad_batches",
                                    "warmup_epochs", "seed"]
    assert search_space_from_config(space, fixed_dicts=True) == space  # what run_study does with a parsed space
    samples = [space["lr"].sample() for _ in range(50)]
    assert all(1e-4 <= value < 1e-2 for value in samples)


@pytest.mark.parametrize("spec, message", [
    ({"lr": {"logunifrom": [1e-4, 1e-2]}}, r"'lr': unknown kind 'logunifrom'; kinds: uniform .*loguniform.*choice"),
    ({"lr": {"loguniform": [0, 1e-2]}}, r"'lr': loguniform needs low > 0"),
    ({"lr": {"uniform": [1e-2, 1e-4]}}, r"'lr': uniform needs low < high"),
    ({"lr": {"uniform": [1e-4]}}, r"'lr': uniform takes \[low, high\]"),
    ({"lr": {"uniform": ["a", 1]}}, r"'lr': uniform bounds must be finite numbers"),
    ({"lr": {"uniform": [0, float("inf")]}}, r"'lr': uniform bounds must be finite numbers"),
    ({"batch_size": {"randint": [1.5, 8]}}, r"'batch_size': randint bounds must be integers"),
    ({"batch_size": {"choice": []}}, r"'batch_size': choice takes a non-empty list"),
    ({"warmup_epochs": {"quniform": [0, 2, 0]}}, r"'warmup_epochs': quniform needs q > 0"),
    ({"lr": {"uniform": [0, 1], "choice": [1]}}, r"'lr': a spec is one \{kind: args\} pair"),
    (["lr"], r"must be a JSON object"),
])
def test_search_space_rejects_bad_input(spec, message):
    with pytest.raises(ValueError, match=message):
        search_space_from_config(spec)


# ------------------------------------------------------------------------ a real study


@pytest.fixture()
def ray_session(shared_ray):
    """The test session's Ray cluster, for this module's in-process study."""
    return shared_ray


@pytest.mark.slow  # a minute or more of Ray Train on 2 cores: `make test`, not `make test-fast`
def test_study_runs_asha_over_ray_train_and_logs_to_mlflow(ingested_lake, ray_session, tmp_path):
    from cv_pipeline.training.ray_trainer import RayTrainer
    from cv_pipeline.training.tuning import run_study, trials_markdown

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.create_experiment("tuning_test", artifact_location=(tmp_path / "artifacts").as_uri())
    trainer = RayTrainer("resnet18", task="classification", storage_path=tmp_path / "ray")
    study = run_study(
        trainer, {**TINY, "dataset_path": ingested_lake.manifest.table_path},
        {"lr": {"grid": [1e-3, 1e-6, 1e-7]}, "label_smoothing": 0.05},
        num_samples=1, max_epochs=2, grace_period=1, reduction_factor=2,
        study_name="study_test", mlflow_tracking_uri=tracking_uri, experiment_id=experiment_id,
    )

    # no placement group outlives its trial (ASHA-stopped trials' ones are removed by the study)
    from ray.util.placement_group import placement_group_table

    assert [group for group in placement_group_table().values() if group["state"] != "REMOVED"] == []

    # every trial reported its validation metric every epoch it ran
    assert (study.monitor, study.mode) == ("val_acc", "max")
    assert len(study.trials) == 3 and {row["status"] for row in study.trials} == {"TERMINATED"}
    by_lr = {row["lr"]: row for row in study.trials}
    assert set(by_lr) == {1e-3, 1e-6, 1e-7}
    for row in study.trials:
        history = study.histories[row["trial_id"]]
        assert [h["training_iteration"] for h in history] == list(range(1, row["epochs"] + 1))
        assert all(0.0 <= h["val_acc"] <= 1.0 and "train_loss" in h for h in history)
        assert row["best_val_acc"] == max(h["val_acc"] for h in history)

    # ASHA: the good trial ran to max_epochs; the two that do not learn were stopped at rung 1
    assert by_lr[1e-3]["epochs"] == 2 and not by_lr[1e-3]["stopped_early"]
    for lr in (1e-6, 1e-7):
        assert by_lr[lr]["stopped_early"] and by_lr[lr]["epochs"] == 1 and by_lr[lr]["stopped_at_epoch"] == 1
    assert study.num_stopped_early == 2

    # the best config is the argmax of the monitor, and only holds what was searched
    best_row = max(study.trials, key=lambda row: row["best_val_acc"])
    assert study.best_trial_id == best_row["trial_id"] and study.best_metric == best_row["best_val_acc"]
    assert study.best_config == {"lr": best_row["lr"]} == {"lr": 1e-3}
    assert trials_markdown(study).splitlines()[2].startswith(f"| {best_row['trial_id']} | 0.001 |")

    # the trials' Train runs live under the trainer's storage path
    assert (tmp_path / "ray" / "study_test").is_dir()
    assert all((tmp_path / "ray" / f"study_test-{row['trial_id']}").is_dir() for row in study.trials)

    # MLflow: a parent run with the table, the best config and metric; a nested run per trial
    client = mlflow.MlflowClient()
    parent = client.get_run(study.mlflow_run_id)
    assert parent.info.experiment_id == experiment_id
    assert parent.data.metrics["best_val_acc"] == pytest.approx(study.best_metric)
    assert parent.data.metrics["num_stopped_early"] == 2 and parent.data.params["max_epochs"] == "2"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "trials.json", "trials.csv", "best_config.json", "search_space.json"}
    assert mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/best_config.json") == {"lr": 1e-3}
    # read the JSON itself: load_table's pandas would turn an all-digit trial id ("05600_00000") into a number
    logged = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/trials.json")
    table = {name: [row[i] for row in logged["data"]] for i, name in enumerate(logged["columns"])}
    assert sorted(table["trial_id"]) == sorted(row["trial_id"] for row in study.trials)
    assert sorted(table["stopped_early"]) == [False, True, True]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.data.tags["trial_id"] for run in children) == sorted(by_row["trial_id"] for by_row in study.trials)
    for child in children:
        row = next(r for r in study.trials if r["trial_id"] == child.data.tags["trial_id"])
        assert float(child.data.params["lr"]) == row["lr"] and child.data.params["label_smoothing"] == "0.05"
        assert child.data.metrics["best_val_acc"] == pytest.approx(row["best_val_acc"])
        assert child.data.tags["stopped_early"] == str(row["stopped_early"]).lower()
        assert len(client.get_metric_history(child.info.run_id, "val_acc")) == row["epochs"]


# ------------------------------------------------------------------------ the asset, through Pipes


@pytest.mark.slow  # a minute or more of Ray Train on 2 cores: `make test`, not `make test-fast`
def test_hpo_study_asset_runs_the_tune_job_through_pipes(ingested_lake, shared_ray, tmp_path):
    from cv_pipeline.defs.launchers import LocalJobLauncher
    from cv_pipeline.defs.resources import LakeResource, MLflowResource
    from cv_pipeline.defs.training import training_dataset
    from cv_pipeline.defs.tuning import best_hpo_config, hpo_study

    lake_dir = tmp_path / "lake"
    shutil.copytree(ingested_lake.lake_dir, lake_dir)
    resources = {"lake": LakeResource(lake_dir=str(lake_dir)),
                 "mlflow": MLflowResource(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                          artifact_root=str(tmp_path / "art"), experiment_name="hpo_test"),
                 "job_launcher": LocalJobLauncher()}
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([training_dataset], resources=resources, instance=instance).success
    assert best_hpo_config(dg.build_asset_context(instance=instance), "classification") is None

    config = {"num_samples": 1, "max_epochs": 1, "search_space": json.dumps({"lr": {"loguniform": [5e-4, 2e-3]}}),
              "base_training": json.dumps(TINY)}
    result = dg.materialize([hpo_study, training_dataset], selection=[hpo_study], resources=resources,
                            instance=instance, run_config={"ops": {"hpo_study": {"config": config}}})
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("hpo_study")[0].metadata.items()}
    assert (meta["task"], meta["monitor"], meta["num_trials"], meta["stopped_early"]) == (
        "classification", "val_acc", 1, 0)
    assert set(meta["best_config"]) == {"lr"} and 5e-4 <= meta["best_config"]["lr"] < 2e-3
    assert 0.0 <= meta["best_val_acc"] <= 1.0
    assert meta["trials"].startswith("| trial_id | lr | best_val_acc |") and meta["trials"].count("\n") == 2

    mlflow.set_tracking_uri(resources["mlflow"].tracking_uri)
    parent = mlflow.MlflowClient().get_run(meta["mlflow_run_id"])
    assert parent.data.tags["dagster_run_id"] == result.run_id and parent.data.tags["dataset_version"]
    assert parent.data.metrics["best_val_acc"] == pytest.approx(meta["best_val_acc"])

    # the training assets take it from here (use_best_hpo_config=True)
    context = dg.build_asset_context(instance=instance)
    assert best_hpo_config(context, "classification") == meta["best_config"]
    assert best_hpo_config(context, "detection") is None


def test_hpo_study_config_rejects_a_bad_search_space():
    from cv_pipeline.defs.tuning import HPOStudyConfig

    with pytest.raises(ValueError, match="unknown kind 'normal'"):
        HPOStudyConfig(search_space=json.dumps({"lr": {"normal": [0, 1]}}))
    with pytest.raises(ValueError, match="base_training is not valid JSON"):
        HPOStudyConfig(base_training="{lr: 1}")
