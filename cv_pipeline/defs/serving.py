"""Serving: a local HTTP server for the champion that outlives the run and follows the alias."""


import dagster as dg

from cv_pipeline.defs.metadata import latest_metadata
from cv_pipeline.defs.registry import champion_classifier
from cv_pipeline.defs.resources import MLflowResource, ServingResource


@dg.asset(
    deps=[champion_classifier],
    group_name="deployment",
    kinds={"mlflow"},
    description="The champion served over HTTP on localhost (mlflow models serve): health-checked, then "
                "asked one sample, whose answer is in the metadata.",
)
def serving_endpoint(context: dg.AssetExecutionContext, mlflow: MLflowResource,
                     serving: ServingResource) -> dg.MaterializeResult:
    from cv_pipeline.training.crops import crop_row
    from cv_pipeline.training.dataset import load_split

    champion = latest_metadata(context, "champion_classifier")
    dataset = latest_metadata(context, "training_dataset")
    server = serving.server()
    info = server.ensure(champion["model_uri"], mlflow.tracking_uri, port=serving.port)
    context.log.info(f"{'Reusing' if info.reused else 'Started'} model server {info.url} (pid {info.pid}) "
                     f"for {info.model_uri}")

    sample = load_split(dataset["path"], int(dataset["delta_version"]), "test")[0]
    crop = crop_row(sample)
    prediction = server.predict([crop])[0]
    truth = next(l["name"] for l in dataset["labels"] if l["category_id"] == sample["category_id"])
    return dg.MaterializeResult(metadata={
        "url": dg.MetadataValue.url(info.url),
        "invocations_url": f"{info.url}/invocations",
        "model_uri": info.model_uri,
        "pid": info.pid,
        "reused_running_server": info.reused,
        "sample_image": f"{sample['file_path']} annotation {sample['annotation_id']}",
        "sample_ground_truth": truth,
        "sample_response": dg.MetadataValue.json(prediction),
    })
