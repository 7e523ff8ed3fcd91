"""Job launchers: how an asset runs a `cv_pipeline/jobs/` script out of process through Dagster Pipes.

The asset does not care where the script runs:

    def classification_model(context, job_launcher: JobLauncher):
        return job_launcher.run(context, "cv_pipeline.jobs.train", extras).get_materialize_result()

- `LocalJobLauncher`: `python -m <module>` under `PipesSubprocessClient` on this machine.
- `DatabricksJobLauncher`: the same script submitted as a one-off Databricks job run on a new
  (GPU) job cluster through `PipesDatabricksClient`; the script starts Ray on Spark there
  (`cv_pipeline.training.ray_cluster.start_ray`).
"""


import sys
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service import compute, jobs
    from dagster_databricks import PipesDatabricksClient

JobContext = dg.AssetExecutionContext | dg.OpExecutionContext


class JobLauncher(dg.ConfigurableResource):
    """Runs a job module through Pipes and returns the completed invocation; call
    `.get_materialize_result()` (single asset) or `.get_results()` on it."""

    def run(self, context: JobContext, module: str, extras: dict | None = None) -> dg.PipesClientCompletedInvocation:
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")


class LocalJobLauncher(JobLauncher):
    """`python -m <module>` with this interpreter, under `dg.PipesSubprocessClient`."""

    env: dict[str, str] = Field(default_factory=dict,
                                description="Extra environment variables for the job process (on top of this one's).")
    cwd: str | None = Field(default=None, description="Working directory of the job process (default: this one's).")

    def run(self, context: JobContext, module: str, extras: dict | None = None) -> dg.PipesClientCompletedInvocation:
        from cv_pipeline.training.ray_cluster import RAY_ENV_DEFAULTS

        return dg.PipesSubprocessClient(cwd=self.cwd).run(
            command=[sys.executable, "-m", module],
            context=context,
            extras=extras or {},
            env={**RAY_ENV_DEFAULTS, **self.env},
        )


class DatabricksJobLauncher(JobLauncher):
    """The job module as a one-off Databricks job run (`jobs/runs/submit`) on a new job cluster,
    through `dagster_databricks.PipesDatabricksClient` (Pipes context and messages over DBFS).

    The script is `<code_path>/<module as a path>.py` (e.g. `<code_path>/cv_pipeline/jobs/train.py`,
    a workspace folder or volume holding a copy of the repository's `cv_pipeline/` package);
    `libraries` must make `cv_pipeline` and its dependencies importable there, normally the
    project's wheel (`make wheel`, uploaded to a volume or workspace path).

    Defaults: Databricks Runtime 16.4 LTS ML for GPU (Ray on Spark and CUDA preinstalled) on
    AWS `g5.4xlarge` workers (1x NVIDIA A10G 24 GB, 16 vCPUs, 64 GiB). On Azure use e.g.
    `Standard_NC4as_T4_v3` (1x T4) or `Standard_NV36ads_A10_v5` (1x A10); on GCP `g2-standard-8` (1x L4).

    Credentials: `token=dg.EnvVar("DATABRICKS_TOKEN")` keeps the token out of the run config; left
    unset, the Databricks SDK's unified authentication resolves them (DATABRICKS_TOKEN,
    DATABRICKS_CLIENT_ID/SECRET, a ~/.databrickscfg profile, ...).
    """

    host: str = Field(description="Workspace URL, e.g. https://adb-123.4.azuredatabricks.net")
    token: str | None = Field(default=None, description='Personal access token: pass dg.EnvVar("DATABRICKS_TOKEN").')
    code_path: str = Field(description="Workspace or volume folder holding the cv_pipeline package "
                                       "(e.g. /Workspace/Shared/cv_pipeline or /Volumes/main/cv/code).")
    spark_version: str = Field(default="16.4.x-gpu-ml-scala2.12",
                               description="Databricks Runtime: an ML GPU runtime (Ray on Spark, CUDA).")
    node_type_id: str = Field(default="g5.4xlarge", description="Worker node type: one GPU per node by default.")
    driver_node_type_id: str | None = Field(default=None, description="Driver node type (default: node_type_id).")
    num_workers: int = Field(default=1, description="Spark worker nodes of the job cluster.")
    ray_workers: int | None = Field(
        default=None, description="Ray worker nodes to start on them (CV_PIPELINE_RAY_WORKER_NODES; default num_workers).")
    libraries: list[str] = Field(
        default_factory=list,
        description="Libraries installed on the cluster: *.whl -> wheel, *.txt -> requirements file, "
                    "*.jar -> jar, anything else -> a PyPI requirement (e.g. 'ray[default]==2.60.0').")
    env: dict[str, str] = Field(default_factory=dict,
                                description="Extra spark_env_vars (e.g. CV_PIPELINE_RAY_CPUS_PER_NODE, CV_PIPELINE_RAY_LOG_DIR).")
    data_security_mode: str | None = Field(
        default="SINGLE_USER",
        description="Cluster access mode: dedicated (SINGLE_USER) for Unity Catalog with Ray on Spark; shared mode does not run Ray.")
    cluster_log_dbfs_path: str | None = Field(
        default=None, description="dbfs:/ folder for cluster logs; when set, the job's stdout/stderr are forwarded to Dagster.")
    timeout_seconds: int | None = Field(default=None, description="Cancel the run after this long (default: no limit).")
    poll_interval_seconds: float = Field(default=5.0, description="How often the run's state is polled.")

    def workspace_client(self) -> "WorkspaceClient":
        """The Databricks client the submission goes through (tests replace this method)."""
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(host=self.host, token=self.token)

    def pipes_client(self) -> "PipesDatabricksClient":
        from dagster_databricks import PipesDatabricksClient

        return PipesDatabricksClient(client=self.workspace_client(), poll_interval_seconds=self.poll_interval_seconds)

    def python_file(self, module: str) -> str:
        if not module.replace(".", "").replace("_", "").isalnum():
            raise ValueError(f"Not a Python module name: {module!r}")
        return f"{self.code_path.rstrip('/')}/{module.replace('.', '/')}.py"

    def libraries_spec(self) -> "list[compute.Library]":
        from databricks.sdk.service import compute

        def library(path: str) -> "compute.Library":
            if path.endswith(".whl"):
                return compute.Library(whl=path)
            if path.endswith(".txt"):
                return compute.Library(requirements=path)
            if path.endswith(".jar"):
                return compute.Library(jar=path)
            return compute.Library(pypi=compute.PythonPyPiLibrary(package=path))

        return [library(path) for path in self.libraries]

    def cluster_spec(self) -> "compute.ClusterSpec":
        from databricks.sdk.service import compute

        from cv_pipeline.training.ray_cluster import RAY_ENV_DEFAULTS, RAY_WORKER_NODES_ENV

        return compute.ClusterSpec(
            spark_version=self.spark_version,
            node_type_id=self.node_type_id,
            driver_node_type_id=self.driver_node_type_id,
            num_workers=self.num_workers,
            data_security_mode=compute.DataSecurityMode(self.data_security_mode) if self.data_security_mode else None,
            cluster_log_conf=(compute.ClusterLogConf(dbfs=compute.DbfsStorageInfo(destination=self.cluster_log_dbfs_path))
                              if self.cluster_log_dbfs_path else None),
            spark_env_vars={
                **RAY_ENV_DEFAULTS,
                RAY_WORKER_NODES_ENV: str(self.ray_workers or self.num_workers),
                **self.env,
            },
            custom_tags={"cv_pipeline": "job"},
        )

    def submit_task(self, module: str) -> "jobs.SubmitTask":
        """The task submitted for `module`, before Pipes adds its bootstrap env vars and tags."""
        from databricks.sdk.service import jobs

        return jobs.SubmitTask(
            task_key=module.rsplit(".", 1)[-1],
            new_cluster=self.cluster_spec(),
            spark_python_task=jobs.SparkPythonTask(python_file=self.python_file(module)),
            libraries=self.libraries_spec() or None,
        )

    def run(self, context: JobContext, module: str, extras: dict | None = None) -> dg.PipesClientCompletedInvocation:
        submit_args: dict = {"run_name": f"cv_pipeline {module.rsplit('.', 1)[-1]} (dagster run {context.run_id[:8]})"}
        if self.timeout_seconds:
            submit_args["timeout_seconds"] = self.timeout_seconds
        return self.pipes_client().run(task=self.submit_task(module), context=context, extras=extras or {},
                                       submit_args=submit_args)


def launcher_for_environment(environment: str, **databricks_config) -> JobLauncher:
    """`LocalJobLauncher()` for `local`; `DatabricksJobLauncher(**databricks_config)` for `databricks`."""
    if environment == "local":
        return LocalJobLauncher()
    if environment == "databricks":
        return DatabricksJobLauncher(**databricks_config)
    raise ValueError(f"No job launcher for environment {environment!r}; choose 'local' or 'databricks'")
