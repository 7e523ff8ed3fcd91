"""Ray for the training and tuning jobs, on this machine or on Databricks' Spark workers.

- locally, Ray starts on this machine (`start_ray`), or a running local cluster is attached to
  (`$CV_PIPELINE_RAY_ADDRESS`, set by `shared_local_ray`, which `cv-pipeline run` and
  `cv-pipeline dev` use: one cluster for every job of a run, started once);
- on Databricks, Ray starts on the job cluster's Spark workers with `ray.util.spark.setup_ray_cluster`.

Environment variables read here (the Databricks launcher sets the first one in the cluster's
`spark_env_vars`; the others may be set through its `env` field):

- `DATABRICKS_RUNTIME_VERSION`: set by Databricks on every cluster; its presence means "on Databricks".
- `CV_PIPELINE_RAY_WORKER_NODES`: Ray worker nodes to start on Spark (default: `num_workers`).
- `CV_PIPELINE_RAY_CPUS_PER_NODE`: CPUs of each Ray worker node on Spark (default: `ceil(cpus_per_worker)`).
- `CV_PIPELINE_RAY_LOG_DIR`: where Ray on Spark collects its node logs when it shuts down
  (default `/dbfs/cv_pipeline/ray_logs`; empty disables collection).
- `CV_PIPELINE_RAY_OBJECT_STORE`: object store bytes of a local Ray (default 256 MiB).
- `CV_PIPELINE_RAY_ADDRESS`: a local Ray cluster to attach to instead of starting one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager


DATABRICKS_RUNTIME_ENV = "DATABRICKS_RUNTIME_VERSION"
RAY_WORKER_NODES_ENV = "CV_PIPELINE_RAY_WORKER_NODES"
RAY_CPUS_PER_NODE_ENV = "CV_PIPELINE_RAY_CPUS_PER_NODE"
RAY_LOG_DIR_ENV = "CV_PIPELINE_RAY_LOG_DIR"
RAY_OBJECT_STORE_ENV = "CV_PIPELINE_RAY_OBJECT_STORE"
RAY_ADDRESS_ENV = "CV_PIPELINE_RAY_ADDRESS"
DEFAULT_RAY_LOG_DIR = "/dbfs/cv_pipeline/ray_logs"
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024**2

# Environment Ray Train needs in the driver and (inherited) in its workers. Set with setdefault, so
# a value the user exported wins. The Databricks launcher also puts them in the cluster's
# spark_env_vars, so Ray worker nodes started inside Spark tasks get them too.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_V2_ENABLED": "1",  # Ray Train V2 (the default in 2.60; pinned so a default flip shows)
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",  # no `uv run` re-exec of workers: use this interpreter's env
    # Ray starts its workers at niceness 15, so on a shared machine (a laptop, a CI runner) any other
    # busy process starves training: a Train worker was seen at 6% of a core beside one plain loop.
    "RAY_worker_niceness": "0",
}

# Off for a local Ray, which has no dashboard and so no State API (installing ray[default] for it
# would add a dashboard process to every run): the preemption watcher (for spot instances) and
# the state actor's reconciliation, which poll that API. Ray Train's placement group cleaner polls
# it too and logs a warning every second when it fails: that goes to the run's log file.
LOCAL_RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    # Ray Train's controller polls its workers every 2 s by default, so a finished run returned up to
    # 2 s late, and more on a busy machine (a one-epoch job spent 4.8 s between its last epoch and
    # fit() returning, 2.5 s at 0.5 s); a poll of one local worker costs next to nothing.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}

# What start_ray started in this process, so stop_ray only tears down its own:
# "local" | "spark" | "attached" (connected to a shared local cluster: shutdown only disconnects).
_started: str | None = None


def on_databricks() -> bool:
    """True inside a Databricks cluster (Databricks sets `DATABRICKS_RUNTIME_VERSION` there)."""
    return bool(os.environ.get(DATABRICKS_RUNTIME_ENV))


def configure_ray_environment() -> None:
    """Set the environment variables Ray Train's driver and workers need (existing values win)."""
    for name, value in {**RAY_ENV_DEFAULTS, **({} if on_databricks() else LOCAL_RAY_ENV_DEFAULTS)}.items():
        os.environ.setdefault(name, value)


def _ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def start_ray(*, num_workers: int, use_gpu: bool, cpus_per_worker: float = 1,
              object_store_bytes: int | None = None) -> str:
    """Make sure this process is connected to a Ray cluster able to host `num_workers` Ray Train
    workers of `cpus_per_worker` CPUs (and one GPU each when `use_gpu`); returns its address.

    - Ray already initialised (a caller, a notebook, a test): nothing is started; its address is returned.
    - `$CV_PIPELINE_RAY_ADDRESS` set (a run's shared cluster, see `shared_local_ray`): attach to it.
    - Locally: `ray.init` on this machine with at least `cpus_per_worker * num_workers + 1` logical
      CPUs (the +1 is the slot Ray Train's controller-side actors take beside the workers), no
      dashboard, Ray leaving logging alone, and an object store of `object_store_bytes` (default
      `$CV_PIPELINE_RAY_OBJECT_STORE`, else 256 MiB).
    - On Databricks: `ray.util.spark.setup_ray_cluster` starts a Ray head on the driver and
      `$CV_PIPELINE_RAY_WORKER_NODES` (default `num_workers`) Ray worker nodes as Spark tasks, each
      with one GPU if `use_gpu` and `$CV_PIPELINE_RAY_CPUS_PER_NODE` (default `ceil(cpus_per_worker)`)
      CPUs; node logs are collected to `$CV_PIPELINE_RAY_LOG_DIR` on shutdown. Then `ray.init` connects to it.

    Pair with `stop_ray()`, or use `ray_cluster(...)`, which does both.
    """
    global _started
    import ray

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    configure_ray_environment()
    if ray.is_initialized():
        return _ray_address()
    if on_databricks():
        import ray.util.spark

        log_dir = os.environ.get(RAY_LOG_DIR_ENV, DEFAULT_RAY_LOG_DIR) or None
        address, _remote_address = ray.util.spark.setup_ray_cluster(
            max_worker_nodes=int(os.environ.get(RAY_WORKER_NODES_ENV) or num_workers),
            num_cpus_worker_node=int(os.environ.get(RAY_CPUS_PER_NODE_ENV) or max(1, math.ceil(cpus_per_worker))),
            num_gpus_worker_node=1 if use_gpu else 0,
            object_store_memory_worker_node=object_store_bytes,
            collect_log_to_path=log_dir,
        )
        try:
            ray.init(address=address)
        except BaseException:
            ray.util.spark.shutdown_ray_cluster()
            raise
        _started = "spark"
        return address
    shared = os.environ.get(RAY_ADDRESS_ENV)
    if shared:
        _require_ray_reachable(shared)
        # its workers get the address too: Ray Train's helper actors call ray.init() with no address,
        # which fails when the machine runs more than one Ray cluster (a test session beside a run)
        ray.init(address=shared, configure_logging=False, runtime_env={"env_vars": {"RAY_ADDRESS": shared}})
        _started = "attached"
        return shared
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_per_worker * num_workers) + 1),
        include_dashboard=False,
        configure_logging=False,
        object_store_memory=int(object_store_bytes or os.environ.get(RAY_OBJECT_STORE_ENV, DEFAULT_OBJECT_STORE_BYTES)),
    )
    _started = "local"
    return _ray_address()


def _require_ray_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise at once when nothing listens at a Ray cluster's `host:port` (`ray.init` would retry
    for minutes against a cluster that is gone)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise RuntimeError(f"${RAY_ADDRESS_ENV}={address}: no Ray cluster answers there ({error}); "
                           f"start it again (cv-pipeline dev) or unset ${RAY_ADDRESS_ENV} to start a local Ray"
                           ) from error


def stop_ray() -> None:
    """Tear down what `start_ray` started in this process (a Ray it found running is left alone):
    `ray.shutdown()`, and on Databricks `ray.util.spark.shutdown_ray_cluster()` after it."""
    global _started
    started, _started = _started, None
    if started is None:
        return
    import ray

    ray.shutdown()
    if started == "spark":
        import ray.util.spark

        ray.util.spark.shutdown_ray_cluster()


@contextmanager
def shared_local_ray(cpus: int | None = None) -> Iterator[str | None]:
    """One local Ray cluster for every job of a run: started here (in this process) unless one is
    already shared or we are on Databricks, its address exported as `$CV_PIPELINE_RAY_ADDRESS`, so
    each Pipes job subprocess attaches to it instead of paying Ray's start-up again; stopped on exit.
    Yields the address (None on Databricks, where each job starts Ray on its own cluster)."""
    import ray

    if on_databricks() or os.environ.get(RAY_ADDRESS_ENV):
        yield os.environ.get(RAY_ADDRESS_ENV)
        return
    global _started
    owned = not ray.is_initialized()  # a Ray this process already runs is shared, and left up
    address = start_ray(num_workers=max(2, cpus or os.cpu_count() or 2), use_gpu=False)
    if owned:
        # this block owns the shared cluster: a ray_cluster()/stop_ray() pair of some caller in this
        # process (a library call, a test) must find it "already running" and leave it up
        _started = None
    os.environ[RAY_ADDRESS_ENV] = address
    try:
        yield address
    finally:
        os.environ.pop(RAY_ADDRESS_ENV, None)
        if owned:
            ray.shutdown()


@contextmanager
def ray_cluster(*, num_workers: int, use_gpu: bool, cpus_per_worker: float = 1,
                object_store_bytes: int | None = None) -> Iterator[str]:
    """`start_ray(...)` on entry (yields the address), `stop_ray()` on exit if this block started it."""
    import ray

    already_running = ray.is_initialized()
    address = start_ray(num_workers=num_workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                        object_store_bytes=object_store_bytes)
    try:
        yield address
    finally:
        if not already_running:
            stop_ray()
