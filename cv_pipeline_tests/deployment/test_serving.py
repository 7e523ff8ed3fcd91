"""A real `mlflow models serve` process: start, reuse across processes, replace, predict, stop."""

import json
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from cv_pipeline.deployment.pyfunc import log_classifier_model
from cv_pipeline.deployment.registry import ModelRegistry
from cv_pipeline.deployment.serving import LocalModelServer, _process_alive
from cv_pipeline.models.classification import ClassifierSpec, build_classifier, save_classifier_artifact
from cv_pipeline.settings import REPO_ROOT
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store

pytestmark = pytest.mark.slow  # two server starts of ~30 s each on a 2-core machine

LABELS = [
    {"index": 0, "category_id": 1, "name": "circle"},
    {"index": 1, "category_id": 2, "name": "square"},
    {"index": 2, "category_id": 7, "name": "triangle"},
]
MODEL_NAME = "served_classifier"


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (36, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def registered_versions(tmp_path_factory):
    """Two registered versions of a tiny classifier in a throwaway SQLite store."""
    root = tmp_path_factory.mktemp("mlflow")
    with temporary_mlflow_store(root, "serving") as store:
        spec = ClassifierSpec(arch="resnet18", labels=LABELS, image_size=32)
        registry = ModelRegistry(store["uri"])
        versions = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            path = save_classifier_artifact(root / f"model_{seed}.pt", build_classifier("resnet18", 3), spec)
            with mlflow.start_run(experiment_id=store["experiment_id"]):
                info = log_classifier_model(path, _image(0))
            versions.append(registry.register(info.model_uri, MODEL_NAME))
        yield {"uri": store["uri"], "versions": versions, "registry": registry}


@pytest.fixture
def server(tmp_path):
    local_server = LocalModelServer(tmp_path / "serving")
    yield local_server
    local_server.stop()  # whatever a test started, or a child process recorded, is gone afterwards


def _start_in_child_process(state_dir, model_uri, tracking_uri) -> dict:
    """ensure() from a separate Python process that exits afterwards, as a Dagster run would."""
    script = textwrap.dedent(
        """
        import dataclasses, json, sys
        from pathlib import Path
        from cv_pipeline.deployment.serving import LocalModelServer
        info = LocalModelServer(Path(sys.argv[1])).ensure(sys.argv[2], sys.argv[3], timeout_s=240)
        print(json.dumps(dataclasses.asdict(info)))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(state_dir), model_uri, tracking_uri],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_server_lifecycle(server, registered_versions):
    registry = registered_versions["registry"]
    uri = registered_versions["uri"]
    first, second = (registry.model_uri(MODEL_NAME, version) for version in registered_versions["versions"])

    started = _start_in_child_process(server.state_dir, first, uri)
    assert started["reused"] is False and started["model_uri"] == first
    assert _process_alive(started["pid"])  # outlived the process that started it
    assert requests.get(f"{started['url']}/ping", timeout=5).status_code == 200
    state = json.loads(server.state_path.read_text())
    assert {"pid", "port", "url", "model_uri", "started_at", "log_path"} <= set(state)

    reused = server.ensure(first, uri)
    assert reused.reused is True and reused.pid == started["pid"] and reused.url == started["url"]
    assert server.status() == reused

    predictions = server.predict([_image(1), _image(2).convert("L"), _image(3)])
    assert len(predictions) == 3
    for row in predictions:
        assert set(row) == {"category_id", "label", "score"}
        assert row["label"] in {"circle", "square", "triangle"} and 0.0 < row["score"] <= 1.0

    replaced = server.ensure(second, uri)
    assert replaced.reused is False and replaced.pid != started["pid"] and replaced.model_uri == second
    assert not _process_alive(started["pid"])
    assert len(server.predict([_image(4)])) == 1

    assert server.stop() is True
    assert not _process_alive(replaced.pid)
    assert not server.state_path.exists()
    assert server.status() is None
    assert server.stop() is False
    with pytest.raises(RuntimeError, match="call ensure"):
        server.predict([_image(5)])


def test_failed_start_raises_with_log_tail(server, registered_versions):
    with pytest.raises(RuntimeError, match="exited with code") as error:
        server.ensure(f"models:/{MODEL_NAME}/99", registered_versions["uri"], timeout_s=120)
    message = str(error.value)
    assert message.startswith("mlflow models serve for models:/served_classifier/99")
    assert "version=99) not found" in message  # from the tail of the server log
    assert not server.state_path.exists()


@pytest.mark.slow
def test_concurrent_ensure_calls_share_one_server(server, registered_versions):
    """Two runs promoting at once must not kill each other's server while it starts."""
    from concurrent.futures import ThreadPoolExecutor

    registry, uri = registered_versions["registry"], registered_versions["uri"]
    model_uri = registry.model_uri(MODEL_NAME, registered_versions["versions"][0])
    other = LocalModelServer(server.state_dir)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: s.ensure(model_uri, uri, timeout_s=240), (server, other)))
    assert results[0].pid == results[1].pid
    assert sorted(r.reused for r in results) == [False, True]
    assert len(server.predict([_image(3)])) == 1
