"""Task models: factories, crops, the one artifact format, and every built-in task's `predict`
answering in the shape its serving signature (`output_example`) declares."""

import pytest
import torch
from PIL import Image

from cv_pipeline.models.builtin_tasks import BUILTIN_TASKS, decode_rle
from cv_pipeline.models.classification import crop_object, preprocess
from cv_pipeline.models.tasks import get_task, load_model_artifact, save_model_artifact

LABELS = [{"index": i, "category_id": c, "name": n} for i, (c, n) in enumerate([(1, "a"), (4, "b"), (9, "c")])]


def test_unknown_architecture_and_class_count_are_refused_with_the_choices():
    spec = get_task("classification")
    with pytest.raises(ValueError, match=r"Unknown model 'vgg99' for task 'classification'; choose one of \['convnext_tiny'"):
        spec.build_model("vgg99", 3)
    with pytest.raises(ValueError, match="needs at least one class"):
        spec.build_model("resnet18", 0)


def test_pretrained_weights_from_a_local_file_follow_the_same_rule_for_every_task(tmp_path):
    spec = get_task("classification")
    source = spec.build_model("mobilenet_v3_small", 3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = spec.build_model("mobilenet_v3_small", 3, pretrained_weights=tmp_path / "w.pt")
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="pretrained_weights file not found"):
        spec.build_model("resnet18", 3, pretrained_weights=tmp_path / "missing.pt")


def test_crop_is_square_padded_and_clipped():
    image = Image.new("RGB", (100, 50))
    crop = crop_object(image, (10, 10, 20, 10), pad_fraction=0.0)
    assert crop.size == (20, 20)
    edge = crop_object(image, (90, 40, 10, 10), pad_fraction=0.5)
    assert edge.size == (15, 15)  # a 20 px square clipped at the right and bottom edges
    with pytest.raises(ValueError, match="outside"):
        crop_object(image, (200, 200, 5, 5))


def test_artifact_round_trip_predicts_the_same(tmp_path):
    spec = get_task("classification")
    model = spec.build_model("resnet18", 3).eval()
    path = save_model_artifact(tmp_path / "model.pt", model, task="classification", arch="resnet18", labels=LABELS,
                               config={"image_size": 32, "epochs": 2, "model_options": {"ignored": "not plain"}})
    loaded, info = load_model_artifact(path)
    assert info["config"] == {"image_size": 32, "epochs": 2} and info["task_module"] is None
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (8, 8), 50)]
    assert preprocess(images, 32).shape == (2, 3, 32, 32)
    with torch.inference_mode():
        expected, answered = spec.predict(model, images, info), spec.predict(loaded, images, info)
    assert [a["category_id"] for a in answered] == [e["category_id"] for e in expected]
    assert [a["score"] for a in answered] == pytest.approx([e["score"] for e in expected], abs=1e-6)
    assert sum(answered[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    torch.save({"hello": 1}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a cv_pipeline model artifact"):
        load_model_artifact(tmp_path / "junk.pt")


def _same_shape(value, example, where: str) -> None:
    """`value` has every key of `example`, recursively, with values of the same kind."""
    if isinstance(example, dict):
        assert isinstance(value, dict), where
        if where.endswith("probabilities"):  # keyed by class name
            return
        for key, inner in example.items():
            assert key in value, f"{where}.{key} missing"
            _same_shape(value[key], inner, f"{where}.{key}")
    elif isinstance(example, list) and example and value:
        for k, item in enumerate(value):
            _same_shape(item, example[0], f"{where}[{k}]")
    elif isinstance(example, float):
        assert isinstance(value, (int, float)), where
    else:
        assert isinstance(value, type(example)), f"{where}: {type(value).__name__} not {type(example).__name__}"


@pytest.mark.parametrize("spec", BUILTIN_TASKS, ids=lambda spec: spec.name)
def test_every_builtin_task_predicts_in_its_declared_shape_at_each_image_size(spec):
    torch.manual_seed(0)
    config = {**spec.defaults, **spec.recipe("quick"), "image_size": 64}
    options = spec.model_options(config)
    model = spec.build_model(None, len(LABELS), **options).eval()
    info = {"labels": LABELS, "config": config, "arch": spec.default_model}
    images = [Image.new("RGB", (96, 72), (30, 200, 30)), Image.new("RGB", (50, 80), (200, 30, 30))]
    with torch.inference_mode():
        answers = spec.predict(model, images, info)
        assert spec.predict(model, [], info) == []
    assert len(answers) == len(images)
    for answer, image in zip(answers, images):
        _same_shape(answer, spec.output_example, spec.name)
        for detection in answer.get("detections", []):
            x, y, w, h = detection["bbox"]
            assert -1 <= x and x + w <= image.width + 1 and -1 <= y and y + h <= image.height + 1
            if "segmentation" in detection:
                assert detection["segmentation"]["size"] == [image.height, image.width]
        for entry in answer.get("classes", []):
            assert decode_rle(entry["mask"]).shape == (image.height, image.width)
            assert decode_rle(entry["mask"]).sum() == entry["pixels"]
        if "width" in answer:
            assert (answer["width"], answer["height"]) == image.size


@pytest.mark.parametrize("spec", BUILTIN_TASKS, ids=lambda spec: spec.name)
def test_every_builtin_task_gives_its_features_and_prediction_signals_in_the_same_pass(spec, tmp_path):
    """What monitoring records per served input: one feature row per image from the task's feature
    module (caught by a hook while predicting), the same predictions as without it, and signals."""
    from cv_pipeline.models.pyfunc import load_vision_model

    torch.manual_seed(0)
    config = {**spec.defaults, **spec.recipe("quick"), "image_size": 64}
    model = spec.build_model(None, len(LABELS), **spec.model_options(config)).eval()
    path = save_model_artifact(tmp_path / "model.pt", model, task=spec.name, arch=spec.default_model,
                               labels=LABELS, options=spec.model_options(config), config=config)
    served = load_vision_model(path)
    images = [Image.new("RGB", (96, 72), (30, 200, 30)), Image.new("RGB", (50, 80), (200, 30, 30)),
              Image.new("RGB", (64, 64), (10, 10, 200))]
    predictions, features = served.predict_images_with_features(images)
    assert predictions == served.predict_images(images)
    assert features.ndim == 2 and features.shape[0] == len(images) and features.shape[1] >= 64
    assert features.dtype.name == "float32" and bool((features == features).all())
    assert not (features[0] == features[2]).all()  # each image its own row
    for prediction, image in zip(predictions, images):
        signals = spec.prediction_signals(prediction, image.width, image.height)
        assert signals and all(isinstance(values, list) for values in signals.values())
        assert all(isinstance(value, str) for value in signals.get("label", []))


def test_ray_trainer_validates_its_arguments():
    from cv_pipeline import RayTrainer

    with pytest.raises(ValueError, match="Unknown model 'nope' for task 'classification'; choose one of"):
        RayTrainer("nope")
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        RayTrainer("resnet18", num_workers=0)
    with pytest.raises(ValueError, match="missing \\['dataset_path'\\]"):
        RayTrainer("resnet18").train({})
