"""Hyperparameter search over RayTrainer with Ray Tune (Ray Train V2 API) and ASHA.

Each Tune trial runs a *driver function* that builds and fits a `TorchTrainer` for one config
(`RayTrainer.torch_trainer(..., callbacks=[TuneReportCallback()])`): the Train workers report per
epoch, `TuneReportCallback` forwards rank 0's metrics to Tune, and ASHA stops the trials whose
validation metric (the task's `val_monitor`) falls below the rung's cutoff. The trial itself is
given no CPU (`tune.with_resources(driver, DRIVER_RESOURCES)`): the Train workers request their own.

The search space is described in JSON (an asset's config, a job's extras) and turned into Tune
domains by `search_space_from_config`::

    {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [16, 32]},
     "weight_decay": {"uniform": [0, 1e-3]}, "label_smoothing": 0.1}

Plain values (numbers, strings, lists) are fixed for every trial; a fixed dict is `{"value": {...}}`.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a trial's driver function reserves: no CPU (the TorchTrainer's workers ask for their own, so
# trials never hold CPUs the workers need), only a little memory, since Tune cannot place an actor that
# asks for nothing at all.
DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 1024**2}

# kind -> (how many numbers, what it means): the JSON vocabulary of search_space_from_config
SEARCH_KINDS = {
    "uniform": "[low, high]: a float uniformly in [low, high)",
    "quniform": "[low, high, q]: uniform, rounded to a multiple of q",
    "loguniform": "[low, high]: a float log-uniformly in [low, high), low > 0",
    "qloguniform": "[low, high, q]: log-uniform, rounded to a multiple of q",
    "randint": "[low, high]: an integer in [low, high)",
    "lograndint": "[low, high]: an integer log-uniformly in [low, high), low >= 1",
    "choice": "[a, b, ...]: one of the values, sampled",
    "grid": "[a, b, ...]: every value, in order (num_samples repeats the whole grid)",
    "value": "anything: a fixed value (use it for a dict)",
}


def _number(key: str, kind: str, value, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"search space {key!r}: {kind} bounds must be finite numbers, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"search space {key!r}: {kind} bounds must be integers, got {value!r}")
    return int(value) if integer else float(value)


def _domain(key: str, kind: str, args):
    from ray import tune

    if kind == "value":
        return args
    if kind == "grid_search":  # what tune.grid_search itself returns: already parsed
        kind = "grid"
    if kind in ("choice", "grid"):
        if not isinstance(args, (list, tuple)) or not args:
            raise ValueError(f"search space {key!r}: {kind} takes a non-empty list of values, got {args!r}")
        return tune.choice(list(args)) if kind == "choice" else tune.grid_search(list(args))
    quantized = kind in ("quniform", "qloguniform")
    expected = 3 if quantized else 2
    if not isinstance(args, (list, tuple)) or len(args) != expected:
        raise ValueError(f"search space {key!r}: {kind} takes {SEARCH_KINDS[kind].split(':')[0]}, got {args!r}")
    integer = kind in ("randint", "lograndint")
    low, high = (_number(key, kind, value, integer=integer) for value in args[:2])
    if not low < high:
        raise ValueError(f"search space {key!r}: {kind} needs low < high, got [{low}, {high}]")
    if kind in ("loguniform", "qloguniform") and low <= 0:
        raise ValueError(f"search space {key!r}: {kind} needs low > 0, got {low}")
    if kind == "lograndint" and low < 1:
        raise ValueError(f"search space {key!r}: lograndint needs low >= 1, got {low}")
    if quantized:
        q = _number(key, kind, args[2])
        if q <= 0:
            raise ValueError(f"search space {key!r}: {kind} needs q > 0, got {q}")
        return (tune.quniform if kind == "quniform" else tune.qloguniform)(low, high, q)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
            "lograndint": tune.lograndint}[kind](low, high)


def search_space_from_config(spec: dict, *, fixed_dicts: bool = False) -> dict:
    """Tune's `param_space` from a JSON-able description: `{key: {kind: args}}` becomes a Tune domain
    (kinds: `SEARCH_KINDS`), any other value is passed through unchanged. Bad kinds and bounds raise
    ValueError naming the key.

    Tune domains pass through, so a parsed space can be given again with `fixed_dicts=True`: then a
    dict that is not a `{kind: args}` spec is a fixed value (what `{"value": {...}}` parsed to)."""
    from ray.tune.search.sample import Domain

    if not isinstance(spec, dict):
        raise ValueError(f"search space must be a JSON object of key -> spec, got {type(spec).__name__}")
    space: dict[str, Any] = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"search space keys must be non-empty strings, got {key!r}")
        if isinstance(value, Domain) or not isinstance(value, dict):
            space[key] = value
            continue
        is_spec = len(value) == 1 and next(iter(value)) in (*SEARCH_KINDS, "grid_search")
        if fixed_dicts and not is_spec:
            space[key] = value
            continue
        if len(value) != 1:
            raise ValueError(f"search space {key!r}: a spec is one {{kind: args}} pair, got {value!r}; "
                             f'kinds: {", ".join(SEARCH_KINDS)} (a fixed dict is {{"value": {{...}}}})')
        (kind, args), = value.items()
        if kind not in SEARCH_KINDS and kind != "grid_search":
            raise ValueError(f"search space {key!r}: unknown kind {kind!r}; kinds: "
                             + "; ".join(f"{name} {meaning}" for name, meaning in SEARCH_KINDS.items()))
        space[key] = _domain(key, kind, args)
    return space


def searched_keys(space: dict) -> list[str]:
    """The keys of a parsed search space that vary between trials (domains and grids)."""
    from ray.tune.search.sample import Domain

    return [key for key, value in space.items()
            if isinstance(value, Domain) or (isinstance(value, dict) and set(value) == {"grid_search"})]


def describe_search_space(space: dict) -> dict:
    """A JSON-able rendering of a parsed search space (for MLflow params and metadata)."""
    from ray.tune.search.sample import Categorical, Domain, Float, Integer

    described = {}
    for key, value in space.items():
        if isinstance(value, Categorical):
            described[key] = {"choice": list(value.categories)}
        elif isinstance(value, (Float, Integer)):
            sampler = type(value.get_sampler()).__name__.strip("_").lower()
            described[key] = {"domain": type(value).__name__.lower(), "sampler": sampler,
                              "bounds": [value.lower, value.upper]}
        elif isinstance(value, Domain):
            described[key] = {"domain": repr(value)}
        elif isinstance(value, dict) and set(value) == {"grid_search"}:
            described[key] = {"grid": list(value["grid_search"])}
        else:
            described[key] = value
    return json.loads(json.dumps(described, default=str))


@dataclass
class StudyResult:
    trials: list[dict]  # one row per trial: trial_id, searched values, best/last monitor, epochs, status, ...
    best_config: dict  # the searched values of the best trial (merge into a training config)
    best_metric: float
    monitor: str  # e.g. val_acc
    mode: str  # max | min
    storage_path: str  # the Tune experiment folder
    study_name: str = ""
    best_trial_id: str = ""
    searched: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    histories: dict[str, list[dict]] = field(default_factory=dict)  # trial id -> reported rows, per epoch

    @property
    def num_stopped_early(self) -> int:
        return sum(1 for trial in self.trials if trial["stopped_early"])

    def __getitem__(self, key):
        return getattr(self, key)


def _trial_driver(config: dict, *, trainer, base_loop_config: dict, study_name: str, max_epochs: int,
                  registry=None) -> None:
    """One Tune trial: a Ray Train run of this config, reporting every epoch to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    name = f"{study_name}-{trial_id}"
    loop_config = {**base_loop_config, "epochs": max_epochs, **config}
    callbacks = [TuneReportCallback()]
    if registry is not None:
        callbacks.append(_placement_group_reporter(registry, name))
    trainer.torch_trainer(loop_config, name=name, callbacks=callbacks).fit()


# ---------------------------------------------------------------- placement groups of stopped trials
#
# When ASHA stops a trial, Tune ends the trial's actor; the Train controller it owns dies with it,
# and so do the Train workers, but not the placement group the controller reserved for them: a
# placement group lives as long as the Ray job. Ray Train's own PlacementGroupCleaner removes it
# only where the State API answers, which needs the Ray dashboard (`ray[default]`); without it
# (this project's local Ray) every stopped trial would keep its workers' CPUs and the next trial
# would wait for them until its worker group start times out. So the study removes them itself:
# a Train callback in each controller registers the controller and its placement groups with a
# small registry actor owned by the study, and `_PlacementGroupJanitor`, a thread of the study,
# removes a run's placement groups once its controller is dead (not before: a live controller may
# still be starting workers in them).


class _PlacementGroupRegistry:
    """Append-only log of (run name, controller handle, placement group), a Ray actor of the study."""

    def __init__(self):
        self.entries = []

    def register(self, name, controller, placement_group) -> None:
        self.entries.append((name, controller, placement_group))

    def since(self, index: int) -> list:
        return self.entries[index:]


def _placement_group_reporter(registry, name: str):
    """A Train controller callback that registers the controller and each worker group's placement
    group with `registry`. Built on Ray Train's internal callback interfaces (the ones its own
    PlacementGroupCleanerCallback uses; TorchTrainer passes non-user callbacks through to the
    controller); if they change, the reporter does nothing and says so."""
    import logging

    import ray
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    logger = logging.getLogger(__name__)

    class PlacementGroupReporter(ControllerCallback, WorkerGroupCallback):
        def __init__(self):
            self.controller = None

        def after_controller_start(self, train_run_context):
            self.controller = ray.get_runtime_context().current_actor

        def after_worker_group_start(self, worker_group):
            try:
                placement_group = worker_group.get_worker_group_state().placement_group_handle.placement_group
                ray.get(registry.register.remote(name, self.controller, placement_group))
            except Exception as error:  # noqa: BLE001 - an internal API moved: lose the cleanup, not the run
                logger.warning("cv_pipeline: could not register the placement group of %s: %r", name, error)

    return PlacementGroupReporter()


class _PlacementGroupJanitor:
    def __init__(self, poll_s: float = 0.5):
        import ray

        self.registry = ray.remote(num_cpus=0)(_PlacementGroupRegistry).remote()
        self.removed: list[str] = []  # run names whose placement groups the janitor removed
        self._poll_s = poll_s
        self._seen = 0
        self._pending: dict[str, dict] = {}  # run name -> {"controller", "groups", "probe"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cv_pipeline-pg-janitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - Ray going away under us: nothing left to clean
                return

    def sweep(self) -> None:
        import ray
        from ray.exceptions import RayActorError
        from ray.util.placement_group import placement_group_table, remove_placement_group

        new = ray.get(self.registry.since.remote(self._seen))
        self._seen += len(new)
        for name, controller, group in new:
            entry = self._pending.setdefault(name, {"controller": controller, "groups": [], "probe": None})
            entry["controller"] = controller
            entry["groups"].append(group)

        def removed(group) -> bool:
            return placement_group_table(group).get("state", "REMOVED") == "REMOVED"

        for name, entry in list(self._pending.items()):
            if all(removed(group) for group in entry["groups"]):  # the run shut down by itself
                del self._pending[name]
                continue
            probe = entry["probe"] = entry["probe"] or entry["controller"].__ray_ready__.remote()
            ready, _ = ray.wait([probe], timeout=0)
            if not ready:
                continue
            entry["probe"] = None
            try:
                ray.get(probe)
                continue  # alive (its ping returned): look again next time
            except RayActorError:
                pass
            for group in entry["groups"]:
                if not removed(group):
                    remove_placement_group(group)
            self.removed.append(name)
            del self._pending[name]

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the thread, then sweep until every registered run is cleaned up (or `timeout_s`)."""
        import time

        import ray

        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + timeout_s
        try:
            self.sweep()
            while self._pending and time.monotonic() < deadline:
                time.sleep(self._poll_s)
                self.sweep()
        finally:
            ray.kill(self.registry)


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _recorders():
    """A Tune callback recording every trial's reported rows and end state, and ASHA recording which
    trials it stopped before max_t (built lazily so importing this module stays cheap)."""
    from ray.tune import Callback
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class TrialRecorder(Callback):
        def __init__(self):
            self.trials: dict[str, dict] = {}

        def _entry(self, trial) -> dict:
            entry = self.trials.setdefault(trial.trial_id, {"config": dict(trial.config), "history": [],
                                                            "status": None, "path": None})
            entry["path"] = trial.path or entry["path"]
            return entry

        def on_trial_start(self, iteration, trials, trial, **info):
            self._entry(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._entry(trial)["history"].append(
                {k: (float(v) if isinstance(v, float) else v) for k, v in result.items()
                 if _scalar(v) or k in ("trial_id", "checkpoint_path")})

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._entry(trial)["status"] = "TERMINATED"

        def on_trial_error(self, iteration, trials, trial, **info):
            self._entry(trial)["status"] = "ERROR"

    class RecordingASHA(ASHAScheduler):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stopped_at: dict[str, int] = {}

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            iteration = result.get(self._time_attr)
            if action == TrialScheduler.STOP and iteration is not None and iteration < self._max_t:
                self.stopped_at[trial.trial_id] = int(iteration)
            return action

    return TrialRecorder, RecordingASHA


def _trial_rows(recorded: dict, result_grid, searched: list[str], monitor: str, mode: str,
                stopped_at: dict[str, int]) -> tuple[list[dict], dict[str, list[dict]]]:
    errors = {result.path: f"{type(result.error).__name__}: {result.error}"
              for result in result_grid if result.error is not None}
    pick = max if mode == "max" else min
    rows, histories = [], {}
    for trial_id, entry in recorded.items():
        history = entry["history"]
        values = [row[monitor] for row in history if _scalar(row.get(monitor))]
        epochs = max((int(row.get("training_iteration", 0)) for row in history), default=0)
        error = errors.get(entry["path"])
        status = "ERROR" if entry["status"] == "ERROR" or error else (entry["status"] or "TERMINATED")
        row = {"trial_id": trial_id, **{key: entry["config"].get(key) for key in searched},
               f"best_{monitor}": pick(values) if values else None,
               f"last_{monitor}": values[-1] if values else None,
               "epochs": epochs, "status": status,
               "stopped_early": trial_id in stopped_at,
               "stopped_at_epoch": stopped_at.get(trial_id),
               "error": (error or "failed") if status == "ERROR" else None}
        rows.append(row)
        histories[trial_id] = [{k: v for k, v in h.items() if k != "checkpoint_path"} for h in history]
    known = {entry["path"] for entry in recorded.values()}
    for path, error in errors.items():  # a trial that failed before it started
        if path not in known:
            rows.append({"trial_id": Path(path).name, **dict.fromkeys(searched), f"best_{monitor}": None,
                         f"last_{monitor}": None, "epochs": 0, "status": "ERROR", "stopped_early": False,
                         "stopped_at_epoch": None, "error": error})
    return rows, histories


def run_study(trainer, base_config: dict, search_space: dict, *, num_samples: int, max_epochs: int,
              grace_period: int = 1, reduction_factor: float = 2, max_concurrent_trials: int = 1,
              study_name: str, mlflow_tracking_uri: str | None = None, experiment_id: str | None = None,
              mlflow_tags: dict | None = None, verbose: int = 0) -> StudyResult:
    """Tune `trainer` (a `RayTrainer`) over `search_space` with ASHA on the task's validation metric.

    `base_config` is a RayTrainer config (must name `dataset_path`; `dataset_version` pins it); each
    trial trains on `{**base loop config, "epochs": max_epochs, **trial config}`. `search_space` is
    a JSON description or already-parsed Tune domains (see `search_space_from_config`). Trials run
    one at a time by default (`max_concurrent_trials`) so they do not fight over CPUs; ASHA
    (`time_attr="training_iteration"`, one iteration per epoch, `max_t=max_epochs`) stops the weak
    ones at its rungs `grace_period * reduction_factor**k`. Ray must already be initialised (see
    `cv_pipeline.training.ray_cluster.ray_cluster`). Tune's experiment goes to
    `<trainer.storage_path>/<study_name>`, each trial's Train run to `<storage>/<study_name>-<trial id>`.

    With `mlflow_tracking_uri`: one parent MLflow run (in `experiment_id`, default experiment if
    None) holds the study's params, the trials table (`trials.json` table + `trials.csv`), the best
    config (`best_config.json`) and `best_<monitor>`; one nested child run per trial holds its
    config, per-epoch metrics, best and last monitor value and whether ASHA stopped it.
    """
    import ray
    from ray import tune

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if not 1 <= grace_period <= max_epochs:
        raise ValueError(f"grace_period must be in [1, max_epochs={max_epochs}], got {grace_period}")
    if reduction_factor <= 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
    if max_concurrent_trials < 1:
        raise ValueError(f"max_concurrent_trials must be >= 1, got {max_concurrent_trials}")
    if not study_name or "/" in study_name:
        raise ValueError(f"study_name must be a non-empty folder name, got {study_name!r}")
    if not ray.is_initialized():
        raise RuntimeError("run_study needs Ray: call it inside cv_pipeline.training.ray_cluster.ray_cluster(...)")

    from ray.tune.search.sample import Domain

    # a space holding Tune domains was parsed already: its dicts are fixed values; else parse strictly
    parsed = isinstance(search_space, dict) and any(isinstance(v, Domain) for v in search_space.values())
    space = search_space_from_config(search_space, fixed_dicts=parsed)
    searched = searched_keys(space)
    spec = trainer.spec
    monitor, mode = spec.val_monitor, spec.mode
    base = {k: v for k, v in base_config.items() if k not in ("mlflow_run_id", "run_name")}
    base_loop_config, manifest = trainer.loop_config(base)

    TrialRecorder, RecordingASHA = _recorders()
    recorder = TrialRecorder()
    # stop_last_trials=False: a trial that reaches max_epochs ends by itself (its Train run shuts down
    # cleanly) instead of being stopped by ASHA on its last report.
    scheduler = RecordingASHA(time_attr="training_iteration", max_t=max_epochs, grace_period=grace_period,
                              reduction_factor=reduction_factor, stop_last_trials=False)
    janitor = _PlacementGroupJanitor()
    driver = tune.with_parameters(_trial_driver, trainer=trainer, base_loop_config=base_loop_config,
                                  study_name=study_name, max_epochs=max_epochs, registry=janitor.registry)
    storage = Path(trainer.storage_path).resolve()
    tuner = tune.Tuner(
        tune.with_resources(driver, DRIVER_RESOURCES),
        param_space=space,
        tune_config=tune.TuneConfig(metric=monitor, mode=mode, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent_trials),
        run_config=tune.RunConfig(name=study_name, storage_path=str(storage), callbacks=[recorder],
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=verbose),
    )
    try:
        result_grid = tuner.fit()
    finally:
        janitor.close()

    rows, histories = _trial_rows(recorder.trials, result_grid, searched, monitor, mode, scheduler.stopped_at)
    scored = [row for row in rows if row[f"best_{monitor}"] is not None]
    if not scored:
        errors = "; ".join(f"{row['trial_id']}: {row['error']}" for row in rows if row["error"]) or "no trial reported"
        raise RuntimeError(f"study {study_name}: no trial reported {monitor} ({errors})")
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda row: row[f"best_{monitor}"])
    best_config = {key: recorder.trials[best["trial_id"]]["config"].get(key) for key in searched}
    study = StudyResult(trials=rows, best_config=best_config, best_metric=float(best[f"best_{monitor}"]),
                        monitor=monitor, mode=mode, storage_path=str(storage / study_name), study_name=study_name,
                        best_trial_id=best["trial_id"], searched=searched, histories=histories)
    if mlflow_tracking_uri:
        study.mlflow_run_id = log_study_to_mlflow(
            study, recorder.trials, mlflow_tracking_uri, experiment_id,
            params={"task": spec.name, "arch": trainer.model, "num_samples": num_samples, "max_epochs": max_epochs,
                    "grace_period": grace_period, "reduction_factor": reduction_factor,
                    "max_concurrent_trials": max_concurrent_trials, "num_workers": trainer.num_workers,
                    "use_gpu": trainer.use_gpu, "dataset_path": manifest.table_path,
                    "dataset_version": manifest.version},
            search_space=describe_search_space(space), tags=mlflow_tags)
    return study


def log_study_to_mlflow(study: StudyResult, recorded: dict, tracking_uri: str, experiment_id: str | None,
                        *, params: dict, search_space: dict, tags: dict | None = None) -> str:
    """The parent run of a study and a nested child run per trial; returns the parent run id."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri)
    monitor = study.monitor
    with mlflow.start_run(experiment_id=experiment_id, run_name=study.study_name) as parent:
        mlflow.set_tags({"cv_pipeline.kind": "hpo_study", "monitor": monitor, "mode": study.mode,
                         **{k: str(v) for k, v in (tags or {}).items()}})
        mlflow.log_params({**params, "search_space": json.dumps(search_space)[:6000]})
        table = pd.DataFrame(study.trials)
        mlflow.log_table(table, artifact_file="trials.json")
        mlflow.log_text(table.to_csv(index=False), "trials.csv")
        mlflow.log_dict(study.best_config, "best_config.json")
        mlflow.log_dict(search_space, "search_space.json")
        mlflow.log_metrics({f"best_{monitor}": study.best_metric, "num_trials": len(study.trials),
                            "num_stopped_early": study.num_stopped_early})
        mlflow.set_tag("best_trial_id", study.best_trial_id)
        parent_id = parent.info.run_id
        for row in study.trials:
            config = recorded.get(row["trial_id"], {}).get("config", {})
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{study.study_name}-{row['trial_id']}",
                                  nested=True, parent_run_id=parent_id):
                mlflow.set_tags({"cv_pipeline.kind": "hpo_trial", "trial_id": row["trial_id"], "status": row["status"],
                                 "stopped_early": str(row["stopped_early"]).lower()})
                mlflow.log_params({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in config.items()})
                for step_row in study.histories.get(row["trial_id"], []):
                    step = int(step_row.get("training_iteration", 0))
                    mlflow.log_metrics({k: float(v) for k, v in step_row.items()
                                        if k.startswith(("val_", "train_")) and _scalar(v)}, step=step)
                final = {"epochs": row["epochs"]}
                for key in (f"best_{monitor}", f"last_{monitor}"):
                    if row[key] is not None:
                        final[key] = row[key]
                mlflow.log_metrics(final)
                if row["error"]:
                    mlflow.set_tag("error", str(row["error"])[:4000])
    return parent_id


def trials_markdown(study: StudyResult) -> str:
    """The trials table as markdown, best trial first (for the Dagster UI)."""
    monitor = study.monitor
    columns = ["trial_id", *study.searched, f"best_{monitor}", "epochs", "stopped_early", "status"]
    reverse = study.mode == "max"
    missing = float("-inf") if reverse else float("inf")
    rows = sorted(study.trials, key=lambda row: missing if row[f"best_{monitor}"] is None else row[f"best_{monitor}"],
                  reverse=reverse)

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
