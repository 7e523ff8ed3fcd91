"""The task registry: what a task is, and the four built in.

A task bundles everything training needs to know about a kind of problem:

- `models`: name -> factory `(num_classes, **options) -> nn.Module` (random weights; no downloads),
- `target_builder`: `(ImageRecord, height, width) -> target dict` from the Delta rows of one image,
- `transforms`: `(train: bool, config) -> transforms v2 callable (image, target) -> (image, target)`,
- `loss`: `(model, batch, config) -> {"loss": total, ...parts}` in training mode (`config`: the training config),
- `metrics`: `model_classes(num_classes) -> torchmetrics.Metric` whose `compute()` gives a dict of scalars, fed by
  `update_metrics(metric, model, batch)` in eval mode; `monitor` names the one that picks checkpoints,

and everything after training, which evaluation, comparison, batch inference and serving share:

- `predict`: `(model, images: list[PIL.Image], info) -> list[dict]`, one JSON-able prediction per image at
  the image's own resolution (`info` is the artifact's header: labels, arch, config); the MLflow pyfunc
  model every task is logged as (`cv_pipeline.models.pyfunc.VisionModel`) calls exactly this,
- `output_example`: one prediction as `predict` returns it (the serving signature's output),
- `evaluation_samples`: `(manifest, split, max_images) -> EvaluationSamples`: what the model is asked
  on a split and the ground truth to score it against,
- `evaluate`: `(SplitPredictions, options) -> TaskEvaluation`: metrics, per-class and per-image rows,
  plots, and the primary metric as a function of image weights (the comparison's paired bootstrap),
- `primary_metric` (a key of the evaluation's metrics) and `promotion_threshold`: the promotion rule's
  defaults,

and what monitoring reads of a served model (`cv_pipeline.monitoring`):

- `feature_module`: `model -> nn.Module` whose output, pooled over space, is the model's penultimate
  representation of an image (recorded at inference by a forward hook: no second pass),
- `prediction_signals`: `(prediction, width, height) -> {name: [value]}`, what of one prediction the
  prediction-drift test compares (string values are categories, numbers a distribution): one value
  per signal per image (a summary such as the top detection's class), since the tests take their
  values as independent samples and one image's detections are not.

A user adds a task with `register_task(TaskSpec(...))` from their own code, exactly as the built-in
ones below are registered; nothing here needs editing. `num_classes` is always the number of
dataset labels; `model_classes` says how many outputs the model gets (detectors and semantic
segmenters add a background class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

ModelFactory = Callable[..., torch.nn.Module]
FULL_PROFILE = "full"  # a task's `defaults`: the recipe its quality goals are measured with


@dataclass(frozen=True)
class TaskSpec:
    name: str
    models: Mapping[str, ModelFactory]
    default_model: str
    loss: Callable[[torch.nn.Module, Any, dict], dict]  # (model, batch, training config)
    metrics: Callable[[int], Any]
    update_metrics: Callable[[Any, torch.nn.Module, Any], None]
    monitor: str  # a key of metrics().compute(), logged as val_<key>
    target_builder: Callable | None = None
    transforms: Callable[[bool, dict], Callable] | None = None
    collate: Callable | None = None
    mode: str = "max"
    model_classes: Callable[[int], int] = lambda num_classes: num_classes
    keep_record: Callable | None = None  # which images a dataset of this task keeps (default: all)
    build_datasets: Callable | None = None  # (manifest, config) -> (train, val): replaces the default Delta dataset
    defaults: Mapping[str, Any] = field(default_factory=dict)  # training config defaults: the "full" recipe
    # other named recipes, each a few keys over `defaults` (e.g. "quick": fewer epochs for a first run);
    # `init_from_upstream` there says whether the model asset starts from its upstream model's weights
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # profile -> the floor of the primary test metric a run of that profile reaches on the bundled samples
    goals: Mapping[str, float] = field(default_factory=dict)
    model_config_keys: tuple = ()  # training config keys also given to the model factory (e.g. image_size)
    loss_in_eval: bool = False  # the model also gives its loss in eval mode (logged as val_loss)
    description: str = ""
    predict: Callable | None = None  # (model, images, info) -> list of JSON-able predictions
    output_example: Mapping[str, Any] | None = None
    evaluation_samples: Callable | None = None  # (manifest, split, max_images) -> EvaluationSamples
    evaluate: Callable | None = None  # (SplitPredictions, options: dict) -> TaskEvaluation
    primary_metric: str = ""  # default: `monitor`
    init_from_task: str | None = None  # the task whose trained model this one's training may start from
    promotion_threshold: float = 0.0  # the test metric a challenger needs (at least; at most when mode="min")
    feature_module: Callable[[torch.nn.Module], torch.nn.Module] | None = None  # its output: the representation
    prediction_signals: Callable[[dict, int, int], dict] | None = None  # (prediction, width, height) -> {name: values}

    @property
    def test_metric(self) -> str:
        """The evaluation metric comparisons and promotion use."""
        return self.primary_metric or self.monitor

    @property
    def higher_is_better(self) -> bool:
        """The direction of `monitor` and of the test metric (`mode`)."""
        return self.mode == "max"

    @property
    def servable(self) -> bool:
        return self.predict is not None and self.evaluation_samples is not None and self.evaluate is not None

    @property
    def val_monitor(self) -> str:
        return f"val_{self.monitor}"

    def recipe(self, profile: str = "full") -> dict:
        """The keys a profile sets over `defaults` ("full" sets none of the training keys: `defaults` are it)."""
        if profile == FULL_PROFILE and profile not in self.profiles:
            return {}
        if profile not in self.profiles:
            raise ValueError(f"task {self.name!r} has no profile {profile!r}; choose one of "
                             f"{sorted({FULL_PROFILE, *self.profiles})}")
        return dict(self.profiles[profile])

    def model_options(self, config: Mapping[str, Any]) -> dict:
        """Factory keyword arguments from a training config: `model_config_keys` + `model_options`."""
        options = {key: config[key] for key in self.model_config_keys if config.get(key) is not None}
        return {**options, **dict(config.get("model_options") or {})}

    def build_model(self, arch: str | None, num_classes: int, pretrained_weights: str | Path | None = None,
                    **options) -> torch.nn.Module:
        """The named model with random weights, or loaded from a local file (see `load_pretrained`)."""
        arch = arch or self.default_model
        if arch not in self.models:
            raise ValueError(f"Unknown model {arch!r} for task {self.name!r}; choose one of {sorted(self.models)}")
        if num_classes < 1:
            raise ValueError(f"task {self.name!r} needs at least one class, got num_classes={num_classes}")
        model = self.models[arch](self.model_classes(num_classes), **options)
        if pretrained_weights:
            load_pretrained(model, pretrained_weights)
        return model


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Make a task available by name to RayTrainer, the job scripts and the assets."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task takes a TaskSpec, got {type(spec).__name__}")
    if spec.name in _TASKS and not replace:
        raise ValueError(f"task {spec.name!r} is already registered; pass replace=True to redefine it")
    if spec.default_model not in spec.models:
        raise ValueError(f"task {spec.name!r}: default_model {spec.default_model!r} is not one of {sorted(spec.models)}")
    if spec.mode not in ("max", "min"):
        raise ValueError(f"task {spec.name!r}: mode must be 'max' or 'min', got {spec.mode!r}")
    _TASKS[spec.name] = spec
    return spec


def get_task(task: str | TaskSpec, module: str | None = None) -> TaskSpec:
    """The registered task by name; `module` (where an artifact says the task was defined) is
    imported first when the name is not registered yet."""
    if isinstance(task, TaskSpec):
        return task
    _register_builtins()
    if task not in _TASKS and module:
        import importlib

        importlib.import_module(module)
    if task not in _TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {available_tasks()} (a task of your own is "
                         f"registered by a module named in ${TASK_MODULES_ENV})")
    return _TASKS[task]


def available_tasks() -> list[str]:
    _register_builtins()
    return sorted(_TASKS)


def build_model(task: str | TaskSpec, arch: str | None, num_classes: int, pretrained_weights=None, **options):
    return get_task(task).build_model(arch, num_classes, pretrained_weights, **options)


def load_pretrained(model: torch.nn.Module, path: str | Path) -> dict:
    """Load weights from a local file into `model`, keeping what fits.

    Takes a plain state dict (`.pt`/`.pth`), a Lightning checkpoint (`.ckpt`, keys under `model.`),
    our saved model artifact (`model.pt`), or the directory of an earlier run's Ray checkpoint.
    Tensors whose shape differs (a new head for another class count) are left at random and
    listed; a file with no tensor that fits is an error.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.rglob("*.ckpt")) + sorted(path.rglob("*.pt"))  # a pyfunc keeps it in artifacts/
        if not candidates:
            raise FileNotFoundError(f"pretrained_weights directory {path} holds no .ckpt or .pt file")
        path = candidates[0]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_weights file not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if not isinstance(state, Mapping):
        raise ValueError(f"pretrained_weights {path} holds no state dict")
    if any(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fitting:
        raise ValueError(f"pretrained_weights {path}: no tensor fits this model (is it for another architecture?)")
    model.load_state_dict(fitting, strict=False)
    skipped = sorted(set(state) - set(fitting))
    return {"loaded": len(fitting), "skipped": skipped, "random": sorted(set(own) - set(fitting))}


_BUILTINS_REGISTERED = False
# Comma-separated modules that register users' tasks (`register_task`) when imported: their tasks
# get the same assets, registered models and endpoints as the built-in ones.
TASK_MODULES_ENV = "CV_PIPELINE_TASK_MODULES"


def task_modules() -> list[str]:
    return [name.strip() for name in os.environ.get(TASK_MODULES_ENV, "").split(",") if name.strip()]


def _register_builtins() -> None:
    global _BUILTINS_REGISTERED
    if _BUILTINS_REGISTERED:
        return
    _BUILTINS_REGISTERED = True
    import importlib

    from cv_pipeline.models import builtin_tasks

    for spec in builtin_tasks.BUILTIN_TASKS:
        _TASKS.setdefault(spec.name, spec)
    for module in task_modules():
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ImportError(f"${TASK_MODULES_ENV} names {module!r}, which does not import: {error}") from error


def task_module(spec: TaskSpec) -> str | None:
    """The module a user's task is defined in (None for the built-in ones), recorded in its artifacts."""
    module = getattr(spec.loss, "__module__", None)
    return None if module is None or module.startswith("cv_pipeline.") else module


MODEL_ARTIFACT_FORMAT = "cv_pipeline.model/1"


def save_model_artifact(path: str | Path, model: torch.nn.Module, *, task: str, arch: str, labels: list[dict],
                        options: dict | None = None, config: dict | None = None, extra: dict | None = None) -> Path:
    """A trained model of any task as one file: task (and the module defining a user's task),
    architecture, factory options, the training config's plain values (what `predict` needs, e.g.
    `image_size`), label map, lineage `extra`, weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in (config or {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
    torch.save({"format": MODEL_ARTIFACT_FORMAT, "task": task, "task_module": task_module(get_task(task)),
                "arch": arch, "labels": labels, "options": dict(options or {}), "config": plain,
                "extra": dict(extra or {}),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
    return path


def load_model_artifact(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model written by `save_model_artifact`, in eval mode; returns it and the artifact's
    header (everything but the weights)."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_ARTIFACT_FORMAT:
        raise ValueError(f"{path} is not a cv_pipeline model artifact ({MODEL_ARTIFACT_FORMAT})")
    spec = get_task(payload["task"], payload.get("task_module"))
    model = spec.build_model(payload["arch"], len(payload["labels"]), **payload["options"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
