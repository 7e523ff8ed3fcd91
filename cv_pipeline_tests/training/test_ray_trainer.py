"""RayTrainer for real on Ray (local) with the sample lake: a user-registered task, fault tolerance
(a killed worker resumes from its last checkpoint), resuming an interrupted run from its storage
path, best-N checkpoints, early stopping, gradient accumulation, and the model artifact."""

from pathlib import Path

import pytest
import torch

from cv_pipeline.models.tasks import available_tasks, get_task, load_model_artifact, load_pretrained, register_task
from cv_pipeline.training.ray_trainer import RayTrainer
from cv_pipeline_tests.toy_tasks import OBJECT_COUNT  # a user's task, in its own module: registered when imported


@pytest.fixture(scope="module")
def toy_task():
    if "object_count_test" not in available_tasks():
        register_task(OBJECT_COUNT)
    return get_task("object_count_test")


@pytest.fixture(scope="module")
def ray_session(shared_ray):
    """The test session's Ray cluster (room for two Train workers)."""
    return shared_ray


# ------------------------------------------------------------------------------------- tests


def test_unknown_names_list_the_choices(toy_task):
    with pytest.raises(ValueError, match=r"Unknown task 'nope'.*classification.*detection"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"Unknown model 'yolo' for task 'detection'.*fasterrcnn_resnet18_fpn"):
        RayTrainer("yolo", task="detection")
    with pytest.raises(ValueError, match="already registered"):
        register_task(OBJECT_COUNT)
    assert {"classification", "detection", "instance_segmentation", "semantic_segmentation",
            "object_count_test"} <= set(available_tasks())


def test_every_builtin_model_builds_without_downloads(monkeypatch):
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    for task in ("classification", "detection", "instance_segmentation", "semantic_segmentation"):
        spec = get_task(task)
        for arch in spec.models:
            model = spec.build_model(arch, 3)
            assert sum(p.numel() for p in model.parameters()) > 0, (task, arch)


def test_pretrained_weights_from_a_local_file(tmp_path):
    spec = get_task("detection")
    source = spec.build_model("fasterrcnn_resnet18_fpn", 5)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = spec.build_model("fasterrcnn_resnet18_fpn", 3)  # another class count: the heads stay random
    report = load_pretrained(target, tmp_path / "weights.pt")
    assert report["loaded"] > 100 and any("box_predictor" in key for key in report["skipped"])
    assert torch.equal(target.backbone.body.conv1.weight, source.backbone.body.conv1.weight)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(target, tmp_path / "missing.pt")
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor fits"):
        load_pretrained(target, tmp_path / "other.pt")


def test_the_semantic_fpn_takes_the_detectors_backbone_and_fpn(tmp_path):
    detector = get_task("detection").build_model("fasterrcnn_resnet18_fpn", 6)
    torch.save(detector.state_dict(), tmp_path / "detector.pt")
    segmenter = get_task("semantic_segmentation").build_model("fpn_resnet18", 7)
    report = load_pretrained(segmenter, tmp_path / "detector.pt")
    assert not [key for key in report["random"] if key.startswith("backbone.")]  # all of it loaded
    assert report["random"] and all(key.startswith(("heads.", "classifier.")) for key in report["random"])
    # the narrower defaults are options: torchvision's widths load into nothing narrower
    wide = get_task("detection").build_model("fasterrcnn_resnet18_fpn", 6, fpn_channels=256, representation_size=1024)
    assert wide.backbone.out_channels == 256 and detector.backbone.out_channels == 128
    assert wide.roi_heads.box_head.fc7.out_features == 1024


def test_a_registered_custom_task_trains_on_ray(toy_task, ingested_lake, ray_session, tmp_path):
    trainer = RayTrainer("countnet", num_workers=2, task="object_count_test", storage_path=tmp_path)
    result = trainer.train({"dataset_path": ingested_lake.manifest.table_path, "epochs": 3,
                            "accumulate_grad_batches": 2, "checkpoints_to_keep": 1, "run_name": "count"})
    assert result.task == "object_count_test" and result.arch == "countnet"
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert all("val_mae" in row and "train_loss" in row for row in result.history)
    assert result.metrics["val_mae"] == min(row["val_mae"] for row in result.history)  # best, not last
    assert len([p for p in Path(result.storage_path).glob("checkpoint_*") if p.is_dir()]) == 1  # best N = 1
    model, info = load_model_artifact(result.model_path)
    assert info["task"] == "object_count_test" and info["extra"]["dataset_hash"] == ingested_lake.manifest.content_hash
    assert model(torch.rand(2, 3, 32, 32)).shape == (2,)


@pytest.mark.slow  # a minute or more of Ray Train on 2 cores: `make test`, not `make test-fast`
def test_a_killed_worker_resumes_from_the_last_checkpoint(toy_task, ingested_lake, ray_session, tmp_path):
    trainer = RayTrainer("countnet", num_workers=2, task="object_count_test", storage_path=tmp_path)
    result = trainer.train({"dataset_path": ingested_lake.manifest.table_path, "epochs": 3, "max_failures": 1,
                            "run_name": "killed",
                            "fault_injection": {"after_epoch": 0, "rank": 1, "marker": str(tmp_path / "kill.marker")}})
    assert (tmp_path / "kill.marker").read_text().isdigit()  # the pid of the worker that was killed
    assert len(result.attempts) == 2
    assert result.attempts[0]["resumed_at_epoch"] is None and result.attempts[1]["resumed_at_epoch"] == 0
    assert [row["epoch"] for row in result.history] == [0, 1, 2]  # epoch 0 was not trained twice


@pytest.mark.slow  # a minute or more of Ray Train on 2 cores: `make test`, not `make test-fast`
def test_an_interrupted_run_resumes_from_its_storage_path(toy_task, ingested_lake, ray_session, tmp_path):
    config = {"dataset_path": ingested_lake.manifest.table_path, "epochs": 3, "max_failures": 0,
              "run_name": "interrupted", "early_stopping_patience": 5,
              "fault_injection": {"after_epoch": 1, "rank": 0, "marker": str(tmp_path / "stop.marker")}}
    trainer = RayTrainer("countnet", num_workers=1, task="object_count_test", storage_path=tmp_path)
    with pytest.raises(RuntimeError, match="interrupted failed"):
        trainer.train(config)
    again = RayTrainer("countnet", num_workers=1, task="object_count_test", storage_path=tmp_path)
    result = again.train(config)
    assert [a["resumed_at_epoch"] for a in result.attempts] == [None, 1]
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
