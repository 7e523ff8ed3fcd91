"""Classifier factory, crops and the saved artifact."""

import pytest
import torch
from PIL import Image

from cv_pipeline.models.classification import (
    ClassifierSpec,
    build_classifier,
    crop_object,
    load_classifier_artifact,
    predict_probabilities,
    preprocess,
    save_classifier_artifact,
)


def test_unknown_architecture_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown classifier architecture 'vgg99'; choose one of \['convnext_tiny', 'efficientnet_b0'"):
        build_classifier("vgg99", 3)


def test_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_classifier("resnet18", 1)


def test_pretrained_weights_from_local_file(tmp_path):
    source = build_classifier("mobilenet_v3_small", 3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = build_classifier("mobilenet_v3_small", 3, pretrained_weights=tmp_path / "w.pt")
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="pretrained_weights file not found"):
        build_classifier("resnet18", 3, pretrained_weights=tmp_path / "missing.pt")


def test_crop_is_square_padded_and_clipped():
    image = Image.new("RGB", (100, 50))
    crop = crop_object(image, (10, 10, 20, 10), pad_fraction=0.0)
    assert crop.size == (20, 20)
    edge = crop_object(image, (90, 40, 10, 10), pad_fraction=0.5)
    assert edge.size == (15, 15)  # a 20 px square clipped at the right and bottom edges
    with pytest.raises(ValueError, match="outside"):
        crop_object(image, (200, 200, 5, 5))


def test_artifact_round_trip_predicts_the_same(tmp_path):
    labels = [{"index": i, "category_id": c, "name": n} for i, (c, n) in enumerate([(1, "a"), (4, "b"), (9, "c")])]
    spec = ClassifierSpec(arch="resnet18", labels=labels, image_size=32)
    model = build_classifier("resnet18", 3).eval()
    path = save_classifier_artifact(tmp_path / "model.pt", model, spec)
    loaded, loaded_spec = load_classifier_artifact(path)
    assert loaded_spec == spec
    batch = preprocess([Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (8, 8), 50)], loaded_spec)
    assert batch.shape == (2, 3, 32, 32)
    assert predict_probabilities(model, batch) == pytest.approx(predict_probabilities(loaded, batch), abs=1e-6)
    (tmp_path / "junk.pt").write_bytes(b"")
    torch.save({"hello": 1}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a cv_pipeline classifier artifact"):
        load_classifier_artifact(tmp_path / "junk.pt")


def test_ray_trainer_validates_its_arguments():
    from cv_pipeline import RayTrainer

    with pytest.raises(ValueError, match="Unknown model 'nope' for task 'classification'; choose one of"):
        RayTrainer("nope")
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        RayTrainer("resnet18", num_workers=0)
    with pytest.raises(ValueError, match="missing \\['dataset_path'\\]"):
        RayTrainer("resnet18").train({})
