"""The one artifact format of every task: an MLflow pyfunc model around the task's model file.

`VisionModel` loads the artifact (`model.pt`, `tasks.save_model_artifact`) and answers with the
task's own `predict`, one JSON-able prediction per image. Evaluation, comparison, batch inference
and the serving endpoints all load this model, so what is served is exactly what was evaluated.
Requests carry images as base64-encoded file bytes in an `image` column, so the same model serves
our endpoints, `mlflow models serve`, `mlflow.pyfunc.load_model` in a notebook and Databricks Model
Serving.
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
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from PIL import Image, UnidentifiedImageError


IMAGE_COLUMN = "image"
ARTIFACT_KEY = "model"
# The distributions the model needs at load time, pinned to what is installed where it was logged.
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "cloudpickle")
# The package's modules travel with the model as `code/cv_pipeline/...`, so it loads where
# `cv_pipeline` is not importable (a server started from another directory). No `__init__.py` is
# copied: where the project's own package is importable, its regular packages take precedence over
# these namespace portions, so loading a model never shadows the live code of a process.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


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


class VisionModel(PythonModel):
    """Any task's model: `predict` takes base64 images in an `image` column and returns the task's
    predictions, one dict per row; `predict_images` does the same for decoded images."""

    def load_context(self, context: PythonModelContext) -> None:
        import torch

        from cv_pipeline.models.tasks import get_task, load_model_artifact

        self.model, self.info = load_model_artifact(context.artifacts[ARTIFACT_KEY])
        self.spec = get_task(self.info["task"], self.info.get("task_module"))
        self.task = self.spec.name
        self._inference_mode = torch.inference_mode

    def predict_images(self, images: list[Image.Image]) -> list[dict]:
        """The task's predictions of already decoded images (what a server calls after validating)."""
        with self._inference_mode():
            return self.spec.predict(self.model, list(images), self.info)

    def predict_images_with_features(self, images: list[Image.Image]) -> tuple[list[dict], Any]:
        """The predictions and, per image, the model's penultimate representation (the task's
        `feature_module` output pooled over space, float32 `N x D`), caught by a forward hook during
        the same pass; None when the task names no feature module."""
        if self.spec.feature_module is None:
            return self.predict_images(images), None
        import numpy as np

        caught: list = []
        handle = self.spec.feature_module(self.model).register_forward_hook(
            lambda module, inputs, output: caught.append(pool_features(output)))
        try:
            predictions = self.predict_images(images)
        finally:
            handle.remove()
        if not caught:
            return predictions, None
        features = np.concatenate(caught, axis=0)
        if len(features) != len(predictions):
            raise RuntimeError(f"task {self.task!r}: its feature module gave {len(features)} rows for "
                               f"{len(predictions)} images")
        return predictions, features

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict]:
        """One prediction per input row; `model_input[IMAGE_COLUMN]` holds base64 text or bytes.

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
        return self.predict_images(images)


def pool_features(output: Any):
    """A module's output as float32 `N x D` rows: maps averaged over space, several maps (a
    backbone's pyramid levels) pooled each and concatenated."""
    import numpy as np
    import torch

    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return np.concatenate([pool_features(item) for item in output], axis=1)
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"cannot pool features from {type(output).__name__}")
    tensor = output.detach().float()
    if tensor.ndim > 2:
        tensor = tensor.flatten(2).mean(dim=2)
    return tensor.reshape(tensor.shape[0], -1).cpu().numpy()


def _pinned_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in _REQUIREMENTS]


def _stage_model_code(destination: Path) -> Path:
    """`destination/cv_pipeline` holding the package's modules (no `__init__.py`), for `code_paths`."""
    target = destination / _PACKAGE_DIR.name
    for source in _PACKAGE_DIR.rglob("*.py"):
        if source.name == "__init__.py" or "__pycache__" in source.parts:
            continue
        relative = source.relative_to(_PACKAGE_DIR)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / relative)
    return target


def log_vision_model(model_path: Path, example_image: Image.Image, name: str = "model") -> ModelInfo:
    """Log the model artifact at `model_path` (any task) as a pyfunc model into the active MLflow run.

    The signature's input is an `image` column of base64 text; its output is the task's
    `output_example`. Requirements are pinned to this environment and the package's code travels
    with the model, so it serves with `--env-manager local` from any working directory.
    Raises RuntimeError without an active run.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model_path not found: {model_path}")
    if mlflow.active_run() is None:
        raise RuntimeError("log_vision_model needs an active MLflow run: call it inside mlflow.start_run()")

    artifacts = {ARTIFACT_KEY: str(model_path)}
    python_model = VisionModel()
    python_model.load_context(PythonModelContext(artifacts=artifacts, model_config=None))
    example_input = pd.DataFrame({IMAGE_COLUMN: [encode_image(example_image)]})
    python_model.predict(None, example_input)  # the example must go through, as a request would
    output_example = python_model.spec.output_example
    if output_example is None:
        raise ValueError(f"task {python_model.task!r} has no output_example: its serving signature is unknown")
    with warnings.catch_warnings():
        # mlflow hints that integer columns cannot hold missing values; category ids are never missing.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        signature = infer_signature(example_input, [dict(output_example)])
    # The weights are shipped as the artifact; the pickled wrapper must not carry them too.
    python_model = VisionModel()

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


def _model_source(uri: str, tracking_uri: str, registry_uri: str | None) -> str:
    """Where the files of a `models:/` URI are (a registered version, an alias or a logged model id),
    asked of the given tracking server and registry; other URIs are returned as they are."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import _parse_model_uri
    from mlflow.utils.uri import is_models_uri

    if not is_models_uri(uri):
        return uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    parsed = _parse_model_uri(uri)
    if parsed.model_id is not None:
        return client.get_logged_model(parsed.model_id).artifact_location
    if parsed.version is None and parsed.alias is None:
        raise ValueError(f"{uri}: name a version or an alias (registry stages are not used here)")
    version = parsed.version or client.get_model_version_by_alias(parsed.name, parsed.alias).version
    return client.get_model_version_download_uri(parsed.name, str(version))


def load_vision_model(model: str | Path, *, tracking_uri: str | None = None, registry_uri: str | None = None,
                      download_dir: str | Path | None = None):
    """The Python model of a pyfunc (`models:/...`, `runs:/...`, a local pyfunc folder), or a
    `VisionModel` of a bare model artifact file (`model.pt`, loaded the same way in process).

    With `tracking_uri`, the URI is resolved and its files fetched through that tracking server and
    registry (default: the tracking URI): MLflow's process-wide URIs are neither read nor changed."""
    from urllib.parse import urlparse

    path = Path(str(model))
    if path.is_file():
        python_model = VisionModel()
        python_model.load_context(PythonModelContext(artifacts={ARTIFACT_KEY: str(path)}, model_config=None))
        return python_model
    source = _model_source(str(model), tracking_uri, registry_uri) if tracking_uri else str(model)
    if source.startswith("file://"):
        source = urlparse(source).path
    if tracking_uri and not Path(source).exists():
        source = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri,
                                                     dst_path=str(download_dir) if download_dir else None)
    return mlflow.pyfunc.load_model(source).unwrap_python_model()
