"""Diagnostic job: reports back its Pipes extras, where it runs and the Ray cluster it got.

Run it through a launcher (`job_launcher.run(context, "cv_pipeline.jobs.echo", extras)`) to check
the wiring end to end without training anything:

- locally (`LocalJobLauncher`): Pipes over a subprocess, a local Ray;
- on Databricks (`DatabricksJobLauncher`): a smoke test of the job cluster: the wheel and libraries
  install, the script is found at `<code_path>/cv_pipeline/jobs/echo.py`, Pipes context and messages
  go through DBFS, and Ray on Spark starts with the GPUs you expect (`ray_resources` shows them).

Extras: anything (echoed back as `extras`); `num_workers` (default 1) and `use_gpu` (default False)
size the Ray cluster it starts, as `start_ray(num_workers=1, use_gpu=False)` by default.

Reports one materialization with: `extras`, `on_databricks`, `databricks_runtime`, `ray_address`,
`ray_resources` (`ray.cluster_resources()`), `ray_nodes`, `python`, `ray_version`.
"""

from __future__ import annotations

import os
import platform


def describe_ray(extras: dict) -> dict:
    """Start (or join) Ray as a job would and describe the cluster."""
    import ray

    from cv_pipeline.training.ray_cluster import ray_cluster

    with ray_cluster(num_workers=int(extras.get("num_workers", 1)), use_gpu=bool(extras.get("use_gpu", False))) as address:
        return {
            "ray_address": address,
            "ray_resources": {k: float(v) for k, v in sorted(ray.cluster_resources().items())
                              if not k.startswith("node:")},
            "ray_nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
            "ray_version": ray.__version__,
        }


def main() -> None:
    from cv_pipeline.jobs.runtime import open_job_pipes
    from cv_pipeline.training.ray_cluster import DATABRICKS_RUNTIME_ENV, on_databricks

    with open_job_pipes() as pipes:
        extras = dict(pipes.extras)
        ray_info = describe_ray(extras)
        pipes.log.info(f"echo: on_databricks={on_databricks()} ray={ray_info['ray_resources']}")
        pipes.report_asset_materialization(metadata={
            "extras": {"raw_value": extras, "type": "json"},
            "on_databricks": {"raw_value": on_databricks(), "type": "bool"},
            "databricks_runtime": {"raw_value": os.environ.get(DATABRICKS_RUNTIME_ENV, ""), "type": "text"},
            "ray_address": {"raw_value": ray_info["ray_address"], "type": "text"},
            "ray_resources": {"raw_value": ray_info["ray_resources"], "type": "json"},
            "ray_nodes": {"raw_value": ray_info["ray_nodes"], "type": "int"},
            "ray_version": {"raw_value": ray_info["ray_version"], "type": "text"},
            "python": {"raw_value": platform.python_version(), "type": "text"},
        })


if __name__ == "__main__":
    main()
