"""What every job script in `cv_pipeline/jobs/` uses to find out where it runs and talk Pipes (Ray
comes from `cv_pipeline.training.ray_cluster`).

The same script runs in two places (DESIGN.md, Environments):

- locally, launched by `PipesSubprocessClient` (`LocalJobLauncher`): Pipes parameters come from
  environment variables, Ray is started on this machine;
- on Databricks, submitted as a one-off job run by `PipesDatabricksClient` (`DatabricksJobLauncher`):
  Pipes context and messages go through DBFS (or Unity Catalog volumes), Ray is started on the
  job cluster's Spark workers with `ray.util.spark.setup_ray_cluster`.

A job script looks like::

    from cv_pipeline.jobs.runtime import open_job_pipes
    from cv_pipeline.training.ray_cluster import ray_cluster

    def main():
        with open_job_pipes() as pipes:
            with ray_cluster(num_workers=pipes.extras["num_workers"], use_gpu=pipes.extras["use_gpu"]):
                ...  # Ray Train / Tune
            pipes.report_asset_materialization(metadata={...})

Ray's environment variables: see `cv_pipeline.training.ray_cluster`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cv_pipeline.training.ray_cluster import on_databricks, ray_cluster

if TYPE_CHECKING:
    from dagster_pipes import PipesContext, PipesContextLoader, PipesMessageWriter, PipesParamsLoader

def databricks_pipes_io() -> tuple[PipesParamsLoader, PipesContextLoader | None, PipesMessageWriter | None]:
    """The Pipes params loader, context loader and message writer matching what
    dagster-databricks' clients inject (0.29):

    - `PipesDatabricksClient` with a `new_cluster` task passes the bootstrap params as
      `spark_env_vars` (environment variables), an `existing_cluster_id` task as the task's CLI
      `parameters` (`--dagster-pipes-context ...`): the params loader follows what is present.
    - Its default `PipesDbfsContextInjector` / `PipesDbfsMessageReader` use a DBFS temp dir
      (`{"path": "/tmp/..."}`, read through the `/dbfs` FUSE mount here): `PipesDbfsContextLoader`
      and `PipesDbfsMessageWriter`. `PipesDatabricksServerlessClient` uses a Unity Catalog volume
      (`{"path": "/Volumes/..."}`): the `PipesUnityCatalogVolumes*` pair. The path decides.

    Loader and writer are None when the process was not launched by Pipes (open_dagster_pipes then
    returns its no-op mock).
    """
    from dagster_pipes import (
        DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT,
        PipesCliArgsParamsLoader,
        PipesDbfsContextLoader,
        PipesDbfsMessageWriter,
        PipesEnvVarParamsLoader,
        PipesUnityCatalogVolumesContextLoader,
        PipesUnityCatalogVolumesMessageWriter,
    )

    params_loader: PipesParamsLoader = (PipesCliArgsParamsLoader() if DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT in sys.argv
                                        else PipesEnvVarParamsLoader())
    if not params_loader.is_dagster_pipes_process():
        return params_loader, None, None

    def on_volume(params: dict) -> bool:
        return str(params.get("path", "")).startswith("/Volumes/")

    context_loader = (PipesUnityCatalogVolumesContextLoader() if on_volume(params_loader.load_context_params())
                      else PipesDbfsContextLoader())
    message_writer = (PipesUnityCatalogVolumesMessageWriter() if on_volume(params_loader.load_messages_params())
                      else PipesDbfsMessageWriter())
    return params_loader, context_loader, message_writer


@contextmanager
def open_job_pipes() -> Iterator[PipesContext]:
    """The job's `PipesContext` (extras, logging, reporting), closed on exit.

    Locally `open_dagster_pipes()` with its defaults (what `PipesSubprocessClient` injects); on
    Databricks with the loader/writer of `databricks_pipes_io()`. Run outside Dagster, it yields
    dagster_pipes' no-op mock and warns.
    """
    from dagster_pipes import open_dagster_pipes

    if on_databricks():
        params_loader, context_loader, message_writer = databricks_pipes_io()
        pipes = open_dagster_pipes(params_loader=params_loader, context_loader=context_loader,
                                   message_writer=message_writer)
    else:
        pipes = open_dagster_pipes()
    with pipes:
        yield pipes


def run_pipes_job(run, report_metadata) -> None:
    """The body of every job script's `main()`: Pipes extras -> `run(params, log)` inside a Ray
    cluster sized by the extras -> `report_metadata(outcome)` as the asset materialization."""
    with open_job_pipes() as pipes:
        params = dict(pipes.extras)
        params.setdefault("ray_storage_path", os.environ.get("CV_PIPELINE_RAY_STORAGE"))
        with ray_cluster(num_workers=int(params.get("num_workers", 1)), use_gpu=bool(params.get("use_gpu", False))):
            outcome = run(params, log=pipes.log.info)
        pipes.report_asset_materialization(metadata=report_metadata(outcome))
