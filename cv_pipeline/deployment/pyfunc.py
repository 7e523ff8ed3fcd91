"""The MLflow pyfunc wrapper around a classifier artifact (`model.pt`), and logging it to a run.

Requests carry images as base64-encoded file bytes in an `image` column, so the same model serves
`mlflow models serve`, `mlflow.pyfunc.load_model` in a notebook and Databricks Model Serving.
"""

import base64
import binascii
import io
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from PIL import Image, UnidentifiedImageError

from cv_pipeline.models.classification import load_classifier_artifact, predict_probabilities, preprocess

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("category_id", "label", "score")
# The distributions the model needs at load time, pinned to what is installed where it was logged.
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "cloudpickle")
# The modules the pickled model needs, copied into it as `code/cv_pipeline/...` so it loads where
# `cv_pipeline` is not importable (a server started from another directory). No `__init__.py` and
# no top-level module is copied: where the project's own package is importable, its regular
# packages take precedence over these namespace portions, so loading a model never shadows the
# live code of a process.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_MODEL_CODE = ("deployment/pyfunc.py", "models/classification.py")


def encode_image(image: Image.Image, format: str = "PNG") -> str:
    """Base64 (ASCII) of the image encoded as a `format` file: the value of one `image` cell."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(value: Any) -> Image.Image:
    """A fully decoded PIL image from base64 text (optionally a `data:` URI) or raw file bytes.

    Raises ValueError when the value is not valid base64 or not a readable image.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"not valid base64 ({error})") from error
    else:
        raise ValueError(f"expected base64 text or image bytes, got {type(value).__name__}")
    if not data:
        raise ValueError("empty image data")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a readable image file ({type(error).__name__})") from error
    return image


class ImageClassifierModel(PythonModel):
    """Top-1 class for each image: `category_id`, `label` and `score` (softmax probability)."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model, self.spec = load_classifier_artifact(context.artifacts["classifier"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One output row per input row; `model_input[IMAGE_COLUMN]` holds base64 text or bytes.

        Raises ValueError naming the row and column of an undecodable image, or listing the
        columns received when there is no `image` column.
        """
        if not isinstance(model_input, pd.DataFrame):
            raise ValueError(f"model_input must be a pandas DataFrame, got {type(model_input).__name__}")
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(
                f"model_input needs a column {IMAGE_COLUMN!r} of base64-encoded images; "
                f"received columns {list(model_input.columns)}"
            )
        images = []
        for row, value in zip(model_input.index, model_input[IMAGE_COLUMN]):
            try:
                images.append(decode_image(value))
            except ValueError as error:
                raise ValueError(f"model_input row {row}, column {IMAGE_COLUMN!r}: {error}") from error
        if not images:
            return pd.DataFrame(
                {
                    "category_id": pd.Series([], dtype="int64"),
                    "label": pd.Series([], dtype="object"),
                    "score": pd.Series([], dtype="float64"),
                }
            )
        probabilities = predict_probabilities(self.model, preprocess(images, self.spec))
        top = probabilities.argmax(axis=1)
        labels = [self.spec.labels[int(index)] for index in top]
        return pd.DataFrame(
            {
                "category_id": np.array([int(label["category_id"]) for label in labels], dtype=np.int64),
                "label": [str(label["name"]) for label in labels],
                "score": probabilities[np.arange(len(top)), top].astype(np.float64),
            }
        )


def _pinned_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in _REQUIREMENTS]


def _stage_model_code(destination: Path) -> Path:
    """`destination/cv_pipeline` holding the `_MODEL_CODE` modules, for `code_paths`."""
    target = destination / _PACKAGE_DIR.name
    for relative in _MODEL_CODE:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_PACKAGE_DIR / relative, target / relative)
    return target


def log_classifier_model(classifier_path: Path, example_image: Image.Image, name: str = "model") -> ModelInfo:
    """Log the classifier at `classifier_path` as a pyfunc model into the active MLflow run.

    The signature is inferred from `example_image` run through the model; requirements are pinned
    to this environment, and the modules it needs travel with it, so it serves with
    `--env-manager local` from any working directory. Raises RuntimeError without an active run.
    """
    classifier_path = Path(classifier_path)
    if not classifier_path.is_file():
        raise FileNotFoundError(f"classifier_path not found: {classifier_path}")
    if mlflow.active_run() is None:
        raise RuntimeError(
            "log_classifier_model needs an active MLflow run: call it inside mlflow.start_run()"
        )

    artifacts = {"classifier": str(classifier_path)}
    python_model = ImageClassifierModel()
    example_input = pd.DataFrame({IMAGE_COLUMN: [encode_image(example_image)]})
    python_model.load_context(PythonModelContext(artifacts=artifacts, model_config=None))
    example_output = python_model.predict(None, example_input)
    with warnings.catch_warnings():
        # mlflow hints that integer columns cannot hold missing values; category_id is never missing.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        signature = infer_signature(example_input, example_output)
    # The weights are shipped as the `classifier` artifact; the pickled wrapper must not carry them too.
    del python_model.model, python_model.spec

    with tempfile.TemporaryDirectory(prefix="cv_pipeline_code_") as staging:
        package_code = _stage_model_code(Path(staging))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts=artifacts,
            code_paths=[str(package_code)],
            pip_requirements=_pinned_requirements(),
            signature=signature,
            input_example=example_input,
        )
