"""What a served model sees, described the way the drift tests compare it: per input its image
statistics, the model's penultimate features and the signals of its prediction.

`describe_inputs` does it for any images through the model's pyfunc (the same code the endpoint
runs); `champion_reference` does it once for a model version on the training split it was trained on
(the task says what its samples are: crops for the classifier, whole images for the others) and
keeps the result next to the lake, so a monitoring pass only reads the inference log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REFERENCE_FORMAT = "cv_pipeline.monitoring.reference/2"  # /2: prediction signals one value per image


@dataclass
class ObservedInputs:
    """Inputs and answers of a model, column-wise: what the drift tests read."""

    statistics: dict[str, np.ndarray]  # statistic name -> one value per input
    features: np.ndarray | None  # N x D penultimate features, or None when the model gives none
    signals: dict[str, list]  # prediction signal -> values pooled over the inputs

    @property
    def count(self) -> int:
        return len(next(iter(self.statistics.values()), []))

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], signals_of) -> "ObservedInputs":
        """From rows holding `statistics` (name -> value), `features` (a list or None), `prediction`
        (a dict or its JSON), `width` and `height`; `signals_of` is the task's `prediction_signals`."""
        statistics: dict[str, list[float]] = {}
        features, signals = [], {}
        rows = list(rows)
        for row in rows:
            for name, value in dict(row.get("statistics") or {}).items():
                statistics.setdefault(name, []).append(float(value))
            if row.get("features") is not None:
                features.append(np.asarray(row["features"], dtype=np.float32))
            prediction = row.get("prediction")
            if isinstance(prediction, str):
                prediction = json.loads(prediction)
            if signals_of is not None and prediction is not None:
                _pool(signals, signals_of(prediction, int(row["width"]), int(row["height"])))
        widths = {len(vector) for vector in features}
        stacked = np.stack(features) if features and len(widths) == 1 and len(features) == len(rows) else None
        return cls({name: np.asarray(values) for name, values in statistics.items()}, stacked, signals)


def _pool(pooled: dict[str, list], signals: Mapping[str, Sequence]) -> None:
    for name, values in signals.items():
        pooled.setdefault(name, []).extend(values)


def input_rows(python_model, images: Sequence, batch_size: int = 16) -> list[dict]:
    """One inference-log-like row per image through a loaded `VisionModel`: its statistics, the
    model's features (`predict_images_with_features`, the endpoint's own call), its prediction and
    size."""
    from cv_pipeline.data.image_statistics import image_statistics

    rows = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        predictions, features = python_model.predict_images_with_features(chunk)
        for k, (image, prediction) in enumerate(zip(chunk, predictions)):
            rows.append({"statistics": image_statistics(image), "prediction": prediction,
                         "features": None if features is None else features[k],
                         "width": image.width, "height": image.height})
    return rows


def describe_inputs(python_model, images: Sequence, batch_size: int = 16) -> ObservedInputs:
    """Statistics, features and prediction signals of `images` through a loaded `VisionModel`."""
    return ObservedInputs.from_rows(input_rows(python_model, images, batch_size), python_model.spec.prediction_signals)


@dataclass
class Reference:
    """A model version's reference: what it saw on its training split."""

    task: str
    model_name: str
    model_version: str
    source: str  # e.g. "training_dataset v3, train split"
    observed: ObservedInputs
    extra: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": REFERENCE_FORMAT, "task": self.task, "model_name": self.model_name,
                  "model_version": self.model_version, "source": self.source, "extra": self.extra,
                  "signals": self.observed.signals, "statistics": sorted(self.observed.statistics)}
        arrays = {f"statistic__{name}": values for name, values in self.observed.statistics.items()}
        if self.observed.features is not None:
            arrays["features"] = self.observed.features
        temporary = path.with_suffix(".tmp.npz")
        np.savez_compressed(temporary, header=np.array(json.dumps(header)), **arrays)
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != REFERENCE_FORMAT:
                raise ValueError(f"{path} is not a monitoring reference ({REFERENCE_FORMAT})")
            statistics = {name: data[f"statistic__{name}"] for name in header["statistics"]}
            features = data["features"] if "features" in data.files else None
        return cls(header["task"], header["model_name"], str(header["model_version"]), header["source"],
                   ObservedInputs(statistics, features, header["signals"]), header.get("extra", {}))


def reference_path(cache_dir: str | Path, model_name: str, version: str) -> Path:
    return Path(cache_dir) / f"{model_name}-v{version}.npz"


def champion_reference(lake_dir: str | Path, model_name: str, version: str, *, tracking_uri: str,
                       registry_uri: str | None = None, cache_dir: str | Path, max_images: int = 1000,
                       split: str = "train") -> Reference:
    """The reference of a registered model version: its task's samples of the `split` of the
    training_dataset version it was trained on (the version's `dataset_version` tag), through the
    model itself. Computed once per version and kept in `cache_dir`."""
    from mlflow import MlflowClient

    from cv_pipeline.models.pyfunc import load_vision_model
    from cv_pipeline.training.dataset import load_manifest

    cached = reference_path(cache_dir, model_name, version)
    if cached.is_file():
        try:
            return Reference.load(cached)
        except ValueError:  # written by another version of this code: computed again
            pass
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    tags = client.get_model_version(model_name, str(version)).tags
    if "dataset_version" not in tags:
        raise ValueError(f"{model_name} v{version} has no dataset_version tag: its training split is unknown")
    manifest = load_manifest(Path(lake_dir) / "training_dataset", int(tags["dataset_version"]))
    python_model = load_vision_model(f"models:/{model_name}/{version}", tracking_uri=tracking_uri,
                                     registry_uri=registry_uri)
    samples = python_model.spec.evaluation_samples(manifest, split, max_images)
    observed = describe_inputs(python_model, samples.images)
    reference = Reference(python_model.task, model_name, str(version),
                          f"training_dataset v{manifest.version}, {split} split ({observed.count} inputs)",
                          observed, {"dataset_version": manifest.version, "dataset_hash": manifest.content_hash})
    reference.save(cached)
    return reference
