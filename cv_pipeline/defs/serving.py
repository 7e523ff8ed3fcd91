"""Serving: one local endpoint per task, with Databricks Model Serving's REST surface, on one server
that outlives the run; each endpoint serves its task's champion (and the challenger where a traffic
split is configured) and follows the aliases without a restart."""


import dagster as dg

from cv_pipeline.defs.metadata import latest_metadata, task_asset
from cv_pipeline.defs.registry import CHAMPION_ASSETS
from cv_pipeline.defs.resources import LakeResource, MLflowResource, ServingResource


def summarize_prediction(prediction) -> str:
    """A short line of one prediction for the UI and the console: its scalar fields, the size of its
    lists, and the best entry of a list of scored entries."""
    if not isinstance(prediction, dict):
        return str(prediction)[:160]
    parts = []
    for key, value in prediction.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3f}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key}={value}")
        elif isinstance(value, list):
            scored = [item for item in value if isinstance(item, dict) and "score" in item]
            best = max(scored, key=lambda item: item["score"], default=None)
            parts.append(f"{len(value)} {key}" + (f" (best {best.get('label')} {best['score']:.2f})" if best else ""))
    return ", ".join(parts)[:200]


def endpoint_asset(task: str):
    @task_asset(task, "endpoint", "champion",
                f"The {task} serving endpoint (POST /serving-endpoints/<name>/invocations, Databricks Model "
                "Serving's request and response): the champion, and the challenger too where a traffic split is "
                "configured; swapped without dropping a request, then asked one test image, whose answer is in "
                "the metadata.")
    def _endpoint(context: dg.AssetExecutionContext, mlflow: MLflowResource, lake: LakeResource,
                  serving: ServingResource) -> dg.MaterializeResult:
        from cv_pipeline.deployment.endpoints import invoke
        from cv_pipeline.deployment.promotion import serve_champion
        from cv_pipeline.models.tasks import get_task
        from cv_pipeline.training.dataset import load_manifest

        champion = latest_metadata(context, f"{task}_champion")
        if champion["version"] == "none":
            context.log.warning(f"{champion['model_name']} has no champion yet: the {task} endpoint is not served")
            return dg.MaterializeResult(metadata={"task": task, "state": "NOT_SERVED (no champion)"})
        endpoint = serve_champion(serving.state_dir, mlflow.registry(), task, champion["model_name"],
                                  tracking_uri=mlflow.tracking_uri,
                                  challenger_percentage=serving.challenger_traffic_percentage,
                                  host=serving.host, port=serving.port)
        dataset = latest_metadata(context, "training_dataset")
        samples = get_task(task).evaluation_samples(
            load_manifest(lake.table_path("training_dataset"), int(dataset["delta_version"])), "test", 1)
        answer = invoke(endpoint["url"], samples.images[:1], client_request_id=f"dagster-{context.run_id}-{task}")
        routes = ", ".join(f"v{e['model_version']} {e['traffic_percentage']}%" for e in endpoint["served_entities"])
        context.log.info(f"{endpoint['name']} serves {routes} at {endpoint['url']}")
        batch_id, image_id = samples.image_keys[0]
        return dg.MaterializeResult(metadata={
            "task": task,
            "endpoint": endpoint["name"],
            "invocations_url": dg.MetadataValue.url(endpoint["url"]),
            "routes": routes,
            "served_entities": dg.MetadataValue.json(endpoint["served_entities"]),
            "config_version": endpoint["config_version"],
            "pid": endpoint["pid"],
            "reused_running_server": endpoint["reused_running_server"],
            "sample_image": f"{batch_id}/{image_id}",
            "sample_request_id": answer.get("databricks_request_id", ""),
            "sample_answered_by": f"{answer.get('model_name')} v{answer.get('model_version')}",
            "sample_summary": summarize_prediction(answer["predictions"][0]),
            "sample_response": dg.MetadataValue.json(answer["predictions"][0]),
        })

    return _endpoint


ENDPOINT_ASSETS = {task: endpoint_asset(task) for task in CHAMPION_ASSETS}
