"""Where job scripts run: `cv_pipeline.training.ray_cluster` (Ray), `cv_pipeline.jobs.runtime` (Pipes) and
`cv_pipeline.defs.launchers`.

Locally everything is real: Ray on this machine, `PipesSubprocessClient` running `cv_pipeline.jobs.echo`.
No Databricks workspace is reachable, so the Databricks side is tested at its boundaries:
`ray.util.spark.setup_ray_cluster` autospec'd (a signature drift fails), and the job submission
through the real `PipesDatabricksClient` against an autospec'd `WorkspaceClient` whose REST
transport (`api_client.do`) is a small in-memory DBFS. The "job run" itself is simulated in
`jobs.submit`: it reads the Pipes context Dagster injected into DBFS and writes back the message
chunk a job would (built with dagster_pipes' own message format), so the round trip context ->
job -> messages -> materialization metadata is exercised; the job script's Databricks branch
(`PipesDbfsContextLoader` reading `/dbfs/...`, `PipesDbfsMessageWriter` needing Databricks'
SparkSession) is only checked for picking those classes.
"""


import base64
import inspect
import json
import os
import socket
from unittest import mock
from unittest.mock import create_autospec

import dagster as dg
import pytest
import ray
import ray.util.spark
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesCliArgsParamsLoader,
    PipesDbfsContextLoader,
    PipesDbfsMessageWriter,
    PipesEnvVarParamsLoader,
    PipesUnityCatalogVolumesContextLoader,
    PipesUnityCatalogVolumesMessageWriter,
    _make_message,
    decode_param,
    encode_param,
)
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import ApiClient
from databricks.sdk.errors import NotFound
from databricks.sdk.service import compute, jobs
from databricks.sdk.service._internal import Wait

from cv_pipeline.defs.launchers import DatabricksJobLauncher, JobLauncher, LocalJobLauncher
from cv_pipeline.jobs.runtime import databricks_pipes_io
from cv_pipeline.training import ray_cluster as runtime
from cv_pipeline.training.ray_cluster import RAY_ENV_DEFAULTS, on_databricks, ray_cluster, start_ray

RAY_INIT, RAY_SHUTDOWN = ray.init, ray.shutdown  # the real ones, to autospec while they are patched
RAY_SETTINGS = (runtime.RAY_WORKER_NODES_ENV, runtime.RAY_CPUS_PER_NODE_ENV, runtime.RAY_LOG_DIR_ENV,
                runtime.RAY_ADDRESS_ENV)


@pytest.fixture
def local(monkeypatch):
    """No Databricks, no shared cluster to attach to, and (for this process) no Ray running: the
    test session's shared Ray may be up in this process."""
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    for name in RAY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    no_real_ray_calls(monkeypatch)


@pytest.fixture
def databricks(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    for name in (*RAY_SETTINGS, *RAY_ENV_DEFAULTS):  # set then delete: monkeypatch restores the original
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the session's shared Ray may be up here
    no_real_ray_calls(monkeypatch)


def no_real_ray_calls(monkeypatch):
    """`ray.init`/`ray.shutdown` autospec'd for the test (a test may patch them again to inspect the
    calls): a real `ray.shutdown()` here would stop the session's shared cluster under later tests."""
    monkeypatch.setattr(ray, "init", create_autospec(RAY_INIT))
    monkeypatch.setattr(ray, "shutdown", create_autospec(RAY_SHUTDOWN))


def test_on_databricks(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert on_databricks() is False
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    assert on_databricks() is True


@pytest.mark.parametrize("overrides, expected", [
    ({}, {"max_worker_nodes": 2, "num_cpus_worker_node": 4, "collect_log_to_path": "/dbfs/cv_pipeline/ray_logs"}),
    ({"CV_PIPELINE_RAY_WORKER_NODES": "3", "CV_PIPELINE_RAY_CPUS_PER_NODE": "15", "CV_PIPELINE_RAY_LOG_DIR": ""},
     {"max_worker_nodes": 3, "num_cpus_worker_node": 15, "collect_log_to_path": None}),
])
def test_start_ray_on_databricks_starts_ray_on_spark(databricks, monkeypatch, overrides, expected):
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    calls = mock.Mock()
    setup = create_autospec(ray.util.spark.setup_ray_cluster, return_value=("10.1.2.3:6379", "ray://10.1.2.3:10001"))
    calls.attach_mock(setup, "setup_ray_cluster")
    calls.attach_mock(create_autospec(ray.util.spark.shutdown_ray_cluster), "shutdown_ray_cluster")
    calls.attach_mock(create_autospec(RAY_INIT), "init")
    calls.attach_mock(create_autospec(RAY_SHUTDOWN), "shutdown")
    monkeypatch.setattr(ray.util.spark, "setup_ray_cluster", calls.setup_ray_cluster)
    monkeypatch.setattr(ray.util.spark, "shutdown_ray_cluster", calls.shutdown_ray_cluster)
    monkeypatch.setattr(ray, "init", calls.init)
    monkeypatch.setattr(ray, "shutdown", calls.shutdown)

    with ray_cluster(num_workers=2, use_gpu=True, cpus_per_worker=3.5, object_store_bytes=2 * 1024**3) as address:
        assert address == "10.1.2.3:6379"
        calls.setup_ray_cluster.assert_called_once_with(
            num_gpus_worker_node=1, object_store_memory_worker_node=2 * 1024**3, **expected)
        calls.init.assert_called_once_with(address="10.1.2.3:6379")
        assert {name: os.environ[name] for name in RAY_ENV_DEFAULTS} == RAY_ENV_DEFAULTS
    assert [name for name, _, _ in calls.mock_calls] == ["setup_ray_cluster", "init", "shutdown", "shutdown_ray_cluster"]
    # setup_ray_cluster takes **kwargs, which autospec accepts: every keyword must also be a named parameter.
    named = {name for name, p in inspect.signature(ray.util.spark.cluster_init.setup_ray_cluster).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(calls.setup_ray_cluster.call_args.kwargs) <= named


def test_start_ray_on_databricks_without_gpu(databricks, monkeypatch):
    setup = create_autospec(ray.util.spark.setup_ray_cluster, return_value=("10.1.2.3:6379", "ray://10.1.2.3:10001"))
    monkeypatch.setattr(ray.util.spark, "setup_ray_cluster", setup)
    monkeypatch.setattr(ray.util.spark, "shutdown_ray_cluster", create_autospec(ray.util.spark.shutdown_ray_cluster))
    with ray_cluster(num_workers=1, use_gpu=False):
        pass
    assert setup.call_args.kwargs["num_gpus_worker_node"] == 0
    assert setup.call_args.kwargs["num_cpus_worker_node"] == 1
    ray.util.spark.shutdown_ray_cluster.assert_called_once_with()


def test_start_ray_locally_arguments(local, monkeypatch):
    """The ray.init arguments; a real local Ray is started by the echo job below (one Ray start keeps this file fast)."""
    monkeypatch.setenv(runtime.RAY_OBJECT_STORE_ENV, str(96 * 1024**2))
    monkeypatch.setattr(runtime, "_ray_address", lambda: "127.0.0.1:6379")
    assert not ray.is_initialized()
    with ray_cluster(num_workers=2, use_gpu=False, cpus_per_worker=1.5) as address:
        assert address == "127.0.0.1:6379"
        ray.init.assert_called_once_with(
            num_cpus=max(os.cpu_count(), 4),  # ceil(1.5 * 2) for the workers + 1 for Ray Train's controller
            include_dashboard=False, configure_logging=False, object_store_memory=96 * 1024**2)
        ray.shutdown.assert_not_called()
    ray.shutdown.assert_called_once_with()
    ray.init.reset_mock()
    with ray_cluster(num_workers=1, use_gpu=False, object_store_bytes=80 * 1024**2):
        assert ray.init.call_args.kwargs["object_store_memory"] == 80 * 1024**2
        assert ray.init.call_args.kwargs["num_cpus"] == max(os.cpu_count(), 2)


def test_start_ray_attaches_to_the_runs_shared_cluster(local, monkeypatch):
    """$CV_PIPELINE_RAY_ADDRESS (set by shared_local_ray): connect, don't start; leaving only disconnects."""
    with socket.create_server(("127.0.0.1", 0)) as listener:  # something answers at the address
        shared = f"127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv(runtime.RAY_ADDRESS_ENV, shared)
        with ray_cluster(num_workers=1, use_gpu=False) as address:
            assert address == shared
            ray.init.assert_called_once_with(address=shared, configure_logging=False,
                                             runtime_env={"env_vars": {"RAY_ADDRESS": shared}})
            assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"  # no State API without a dashboard
            assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    ray.shutdown.assert_called_once_with()


def test_a_shared_cluster_that_is_gone_is_a_clear_error_not_a_hang(local, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        gone = f"127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv(runtime.RAY_ADDRESS_ENV, gone)
    with pytest.raises(RuntimeError, match=rf"CV_PIPELINE_RAY_ADDRESS={gone}: no Ray cluster answers there"):
        start_ray(num_workers=1, use_gpu=False)
    ray.init.assert_not_called()


def test_shared_local_ray_exports_its_address_for_the_jobs(local, monkeypatch):
    monkeypatch.setattr(runtime, "_ray_address", lambda: "127.0.0.1:6381")
    with runtime.shared_local_ray() as address:
        assert address == os.environ[runtime.RAY_ADDRESS_ENV] == "127.0.0.1:6381"
        assert ray.init.call_args.kwargs["num_cpus"] == max(os.cpu_count(), 3)  # two Train workers + controller
    assert runtime.RAY_ADDRESS_ENV not in os.environ
    ray.shutdown.assert_called_once_with()


def test_start_ray_joins_a_running_ray(monkeypatch):
    """Ray already initialised (by a caller, a notebook): nothing is started, and nothing stopped."""
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    no_real_ray_calls(monkeypatch)
    monkeypatch.setattr(ray.util.spark, "setup_ray_cluster", create_autospec(ray.util.spark.setup_ray_cluster))
    monkeypatch.setattr(runtime, "_ray_address", lambda: "10.0.0.9:6379")
    for databricks_runtime in ("", "16.4"):
        monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", databricks_runtime)
        with ray_cluster(num_workers=4, use_gpu=True) as address:
            assert address == "10.0.0.9:6379"
        assert start_ray(num_workers=1, use_gpu=False) == "10.0.0.9:6379"
        runtime.stop_ray()
    ray.init.assert_not_called()
    ray.shutdown.assert_not_called()
    ray.util.spark.setup_ray_cluster.assert_not_called()


def test_databricks_pipes_io(monkeypatch):
    monkeypatch.delenv(DAGSTER_PIPES_CONTEXT_ENV_VAR, raising=False)
    params_loader, context_loader, message_writer = databricks_pipes_io()
    assert isinstance(params_loader, PipesEnvVarParamsLoader) and context_loader is None and message_writer is None

    # PipesDatabricksClient, new_cluster task: env vars, DBFS temp dirs.
    monkeypatch.setenv(DAGSTER_PIPES_CONTEXT_ENV_VAR, encode_param({"path": "/tmp/abc/context.json"}))
    monkeypatch.setenv(DAGSTER_PIPES_MESSAGES_ENV_VAR, encode_param({"path": "/tmp/def", "includes_stdio": False}))
    params_loader, context_loader, message_writer = databricks_pipes_io()
    assert isinstance(params_loader, PipesEnvVarParamsLoader)
    assert isinstance(context_loader, PipesDbfsContextLoader) and isinstance(message_writer, PipesDbfsMessageWriter)

    # existing_cluster_id task (CLI parameters), or the serverless client's Unity Catalog volumes.
    monkeypatch.delenv(DAGSTER_PIPES_CONTEXT_ENV_VAR)
    monkeypatch.setattr("sys.argv", ["echo.py",
                                     "--dagster-pipes-context", encode_param({"path": "/Volumes/m/s/v/tmp/x/context.json"}),
                                     "--dagster-pipes-messages", encode_param({"path": "/Volumes/m/s/v/tmp/y"})])
    params_loader, context_loader, message_writer = databricks_pipes_io()
    assert isinstance(params_loader, PipesCliArgsParamsLoader)
    assert isinstance(context_loader, PipesUnityCatalogVolumesContextLoader)
    assert isinstance(message_writer, PipesUnityCatalogVolumesMessageWriter)


@dg.asset
def echo_job(context: dg.AssetExecutionContext, job_launcher: JobLauncher) -> dg.MaterializeResult:
    return job_launcher.run(context, "cv_pipeline.jobs.echo", {"purpose": "launcher test", "num_workers": 2}
                            ).get_materialize_result()


def test_local_launcher_runs_the_echo_job(local):
    result = dg.materialize([echo_job], resources={"job_launcher": LocalJobLauncher()})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("echo_job")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["extras"] == {"purpose": "launcher test", "num_workers": 2}
    assert metadata["on_databricks"] is False
    assert metadata["ray_nodes"] == 1
    # A real local Ray, started by start_ray: 2 workers of 1 CPU + 1 for Ray Train's controller; stopped on exit.
    assert metadata["ray_resources"]["CPU"] == max(os.cpu_count(), 3)
    assert metadata["ray_address"]
    assert metadata["ray_version"] == ray.__version__


class FakeDbfs:
    """The DBFS REST endpoints PipesDatabricksClient's context injector and message reader call,
    served from memory through an autospec'd `ApiClient.do`."""

    def __init__(self):
        self.dirs = set()
        self.files = {}  # path -> base64 contents, as the API carries them

    def do(self, method, path=None, url=None, query=None, headers=None, body=None, **kwargs):
        if path == "/api/2.0/dbfs/mkdirs":
            self.dirs.add(body["path"])
            return {}
        if path == "/api/2.0/dbfs/put":
            self.files[body["path"]] = body["contents"]
            return {}
        if path == "/api/2.0/dbfs/delete":
            self.dirs = {d for d in self.dirs if not d.startswith(body["path"])}
            self.files = {f: c for f, c in self.files.items() if not f.startswith(body["path"] + "/")}
            return {}
        if path == "/api/2.0/dbfs/get-status" and (query["path"] in self.dirs or query["path"] in self.files):
            return {"path": query["path"], "is_dir": query["path"] in self.dirs}
        if path == "/api/2.0/dbfs/read" and query["path"] in self.files:
            data = self.files[query["path"]]
            return {"bytes_read": len(base64.b64decode(data)), "data": data}
        if path.startswith("/api/2.0/dbfs/"):
            raise NotFound(f"{query or body} does not exist")
        raise AssertionError(f"unexpected Databricks API call {method} {path}")


def test_databricks_launcher_submits_a_gpu_job_run(local, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    client = create_autospec(WorkspaceClient, instance=True)
    client.jobs = create_autospec(jobs.JobsAPI, instance=True)
    client.api_client = create_autospec(ApiClient, instance=True)
    dbfs = FakeDbfs()
    client.api_client.do.side_effect = dbfs.do
    job_run: dict = {}

    def run_the_job(*, tasks, **submit_args):
        """What the echo job does on the cluster: read the injected context, report back through DBFS."""
        (task,) = tasks
        env = task.new_cluster.spark_env_vars
        context_path = decode_param(env[DAGSTER_PIPES_CONTEXT_ENV_VAR])["path"]
        messages_dir = decode_param(env[DAGSTER_PIPES_MESSAGES_ENV_VAR])["path"]
        job_run["context"] = json.loads(base64.b64decode(dbfs.files[context_path]))
        chunk = "\n".join(json.dumps(message) for message in [
            _make_message("opened", {"extras": {}}),
            _make_message("report_asset_materialization", {"asset_key": "echo_job", "data_version": None, "metadata": {
                "extras": {"raw_value": job_run["context"]["extras"], "type": "json"},
                "on_databricks": {"raw_value": True, "type": "bool"},
            }}),
            _make_message("closed", {}),
        ])
        dbfs.files[f"{messages_dir}/1.json"] = base64.b64encode(chunk.encode()).decode()
        return Wait(waiter=lambda **kwargs: None, run_id=4242)

    client.jobs.submit.side_effect = run_the_job
    client.jobs.get_run.return_value = jobs.Run(
        run_id=4242, run_page_url="https://example.cloud.databricks.com/#job/1/run/4242",
        state=jobs.RunState(life_cycle_state=jobs.RunLifeCycleState.TERMINATED, result_state=jobs.RunResultState.SUCCESS))
    tokens_seen = []

    def workspace_client(self):
        tokens_seen.append(self.token)
        return client

    monkeypatch.setattr(DatabricksJobLauncher, "workspace_client", workspace_client)
    launcher = DatabricksJobLauncher(
        host="https://example.cloud.databricks.com", token=dg.EnvVar("DATABRICKS_TOKEN"),
        code_path="/Workspace/Shared/cv_pipeline/", num_workers=2, ray_workers=2,
        libraries=["/Volumes/main/cv/code/cv_pipeline-0.1.0-py3-none-any.whl"], poll_interval_seconds=0.01)

    result = dg.materialize([echo_job], resources={"job_launcher": launcher})

    assert result.success
    assert tokens_seen == ["dapi-test-token"]  # resolved from the environment at run time
    client.jobs.submit.assert_called_once()
    submit = client.jobs.submit.call_args.kwargs
    assert "echo" in submit["run_name"]
    (task,) = submit["tasks"]
    assert task.task_key == "echo"
    assert task.spark_python_task.python_file == "/Workspace/Shared/cv_pipeline/cv_pipeline/jobs/echo.py"
    assert task.libraries == [compute.Library(whl="/Volumes/main/cv/code/cv_pipeline-0.1.0-py3-none-any.whl")]
    cluster = task.new_cluster
    assert (cluster.node_type_id, cluster.num_workers) == ("g5.4xlarge", 2)
    assert "gpu-ml" in cluster.spark_version
    assert cluster.data_security_mode == compute.DataSecurityMode.SINGLE_USER
    env = cluster.spark_env_vars
    assert env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0" and env["CV_PIPELINE_RAY_WORKER_NODES"] == "2"
    assert decode_param(env[DAGSTER_PIPES_CONTEXT_ENV_VAR])["path"].startswith("/tmp/")
    assert job_run["context"]["extras"] == {"purpose": "launcher test", "num_workers": 2}
    assert job_run["context"]["asset_keys"] == ["echo_job"]
    client.jobs.get_run.assert_called_with(4242)
    assert not dbfs.files and not dbfs.dirs  # Pipes cleaned up its DBFS temp dirs

    (materialization,) = result.asset_materializations_for_node("echo_job")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["extras"] == {"purpose": "launcher test", "num_workers": 2}
    assert metadata["on_databricks"] is True
    assert metadata["Databricks Job Run ID"] == "4242"
    assert metadata["Databricks Job Run URL"].endswith("/run/4242")
