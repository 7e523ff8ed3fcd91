import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cv_pipeline.models.pyfunc import ARTIFACT_KEY, VisionModel, decode_image, encode_image, log_vision_model
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry
from cv_pipeline.models.tasks import get_task, save_model_artifact
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store

LABELS = [
    {"index": 0, "category_id": 1, "name": "circle"},
    {"index": 1, "category_id": 2, "name": "square"},
    {"index": 2, "category_id": 7, "name": "triangle"},
]


def _image(seed: int, size=(40, 52)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A throwaway SQLite tracking + registry store, set as the tracking URI for this module only."""
    with temporary_mlflow_store(tmp_path_factory.mktemp("mlflow"), "pyfunc-registry") as store:
        yield store


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_artifact(tmp_path_factory.mktemp("classifier") / "model.pt",
                               get_task("classification").build_model("resnet18", 3), task="classification",
                               arch="resnet18", labels=LABELS, config={"image_size": 32})


@pytest.fixture(scope="module")
def logged_models(mlflow_store, classifier_path):
    """Two logged pyfunc models (two runs) of the same classifier."""
    infos = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=mlflow_store["experiment_id"]) as run:
            infos.append((run.info.run_id, log_vision_model(classifier_path, _image(0))))
    return infos


def test_encode_decode_round_trip():
    image = _image(1)
    decoded = decode_image(encode_image(image))
    assert decoded.size == image.size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    raw_png = base64.b64decode(encode_image(image, "JPEG"))
    assert decode_image(raw_png).format == "JPEG"
    assert decode_image("data:image/png;base64," + encode_image(image)).size == image.size
    with pytest.raises(ValueError, match="not valid base64"):
        decode_image("not base64!")
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"plain bytes")


def test_predict_validates_input_columns_and_rows(classifier_path):
    model = VisionModel()
    artifacts = {ARTIFACT_KEY: str(classifier_path)}
    context = mlflow.pyfunc.PythonModelContext(artifacts=artifacts, model_config=None)
    model.load_context(context)
    with pytest.raises(ValueError, match=r"received columns \['picture'\]"):
        model.predict(None, pd.DataFrame({"picture": [encode_image(_image(0))]}))
    frame = pd.DataFrame({"image": [encode_image(_image(0)), "%%%not-base64%%%"]})
    with pytest.raises(ValueError, match=r"row 1, column 'image'"):
        model.predict(None, frame)
    raw = base64.b64decode(encode_image(_image(2)))
    out = model.predict(None, pd.DataFrame({"image": [raw]}))
    assert len(out) == 1 and set(out[0]) == {"category_id", "label", "score", "probabilities"}
    assert model.predict(None, pd.DataFrame({"image": pd.Series([], dtype=object)})) == []
    assert model.task == "classification"


def test_log_requires_an_active_run(classifier_path, mlflow_store):
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_vision_model(classifier_path, _image(0))


def test_register_aliases_promote_and_serve_champion(mlflow_store, logged_models):
    (run_a, info_a), (run_b, info_b) = logged_models
    registry = ModelRegistry(mlflow_store["uri"])
    name = "shape_classifier"

    assert registry.version_for_alias(name, CHAMPION) is None  # no such model
    first = registry.register(info_a.model_uri, name, tags={"task": "classification"})
    second = registry.register(f"runs:/{run_b}/model", name)  # a runs:/ URI resolves to the logged model
    assert (first, second) == ("1", "2")
    version = registry.client.get_model_version(name, second)
    logged_b = registry.client.get_logged_model(info_b.model_id)
    assert version.run_id == run_b and version.source == logged_b.artifact_location
    assert json.loads(logged_b.tags["mlflow.modelVersions"]) == [{"name": name, "version": "2"}]
    code_dir = Path(logged_b.artifact_location) / "code"
    shipped = {str(path.relative_to(code_dir)) for path in code_dir.rglob("*.py")}
    assert {"cv_pipeline/models/pyfunc.py", "cv_pipeline/models/tasks.py",
            "cv_pipeline/models/builtin_tasks.py"} <= shipped
    assert not any(path.endswith("__init__.py") for path in shipped)  # never shadows the live package
    signature = mlflow.models.get_model_info(info_b.model_uri).signature
    assert signature.inputs.input_names() == ["image"]
    assert {"category_id", "label", "score", "probabilities"} <= set(signature.outputs.input_names())
    assert registry.client.get_model_version(name, first).tags["task"] == "classification"
    assert registry.version_for_alias(name, CHAMPION) is None  # model exists, alias does not

    registry.set_alias(name, CHALLENGER, first)
    assert registry.version_for_alias(name, CHALLENGER) == "1"
    registry.promote(name, first)
    assert registry.version_for_alias(name, CHAMPION) == "1"
    assert registry.version_for_alias(name, CHALLENGER) is None  # cleared: it pointed at the promoted version

    registry.set_alias(name, CHALLENGER, second)
    registry.promote(name, first)  # a challenger at another version stays
    assert registry.version_for_alias(name, CHALLENGER) == "2"
    registry.promote(name, second)
    assert registry.version_for_alias(name, CHAMPION) == "2"
    assert registry.version_for_alias(name, CHALLENGER) is None
    assert registry.model_uri(name, second) == "models:/shape_classifier/2"

    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    frame = pd.DataFrame({"image": [encode_image(_image(3)), encode_image(_image(4), "JPEG")]})
    predictions = model.predict(frame)
    assert len(predictions) == 2
    assert {p["label"] for p in predictions} <= {"circle", "square", "triangle"}
    assert {p["category_id"] for p in predictions} <= {1, 2, 7}
    assert all(1 / 3 <= p["score"] <= 1.0 for p in predictions)  # top-1 of 3 classes

    with pytest.raises(ValueError, match=r"row 1, column 'image'"):
        model.predict(pd.DataFrame({"image": [encode_image(_image(3)), "bm90IGFuIGltYWdl"]}))


def test_registry_errors_other_than_not_found_propagate(mlflow_store):
    registry = ModelRegistry(mlflow_store["uri"])
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry.version_for_alias("", CHAMPION)  # an invalid name is not "missing"


def test_load_vision_model_asks_the_given_store_and_leaves_mlflows_own_alone(mlflow_store, logged_models, tmp_path):
    from cv_pipeline.models.pyfunc import load_vision_model

    (_, info), _ = logged_models
    registry = ModelRegistry(mlflow_store["uri"])
    version = registry.register(info.model_uri, "loaded_elsewhere")
    registry.set_alias("loaded_elsewhere", CHAMPION, version)
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(elsewhere)  # the process-wide store is another one
    try:
        for uri in (f"models:/loaded_elsewhere/{version}", "models:/loaded_elsewhere@champion", info.model_uri):
            model = load_vision_model(uri, tracking_uri=mlflow_store["uri"], download_dir=tmp_path / "dl")
            assert model.task == "classification", uri
        assert mlflow.get_tracking_uri() == elsewhere
        with pytest.raises(ValueError, match="name a version or an alias"):
            load_vision_model("models:/loaded_elsewhere/Production", tracking_uri=mlflow_store["uri"])
    finally:
        mlflow.set_tracking_uri(mlflow_store["uri"])
