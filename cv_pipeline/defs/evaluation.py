"""Evaluation report of the trained classifier on the pinned test split."""


import dagster as dg

from cv_pipeline.defs.metadata import latest_metadata, markdown_table
from cv_pipeline.defs.resources import MLflowResource
from cv_pipeline.defs.training import classifier_model


@dg.asset(
    deps=[classifier_model],
    group_name="evaluation",
    kinds={"mlflow"},
    description="Accuracy, per-class precision/recall/F1 and a confusion matrix on the test split.",
)
def classifier_evaluation(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
    import mlflow as mlflow_client

    from cv_pipeline.evaluation.classification_report import evaluate_classifier
    from cv_pipeline.evaluation.plots import png_data_uri_markdown

    trained = latest_metadata(context, "classifier_model")
    dataset = latest_metadata(context, "training_dataset")
    evaluation = evaluate_classifier(trained["model_uri"], dataset["path"], int(trained["dataset_version"]),
                                     tracking_uri=mlflow.tracking_uri)
    metrics = evaluation.metrics

    mlflow_client.set_tracking_uri(mlflow.tracking_uri)
    with mlflow_client.start_run(run_id=trained["mlflow_run_id"]):
        mlflow_client.log_metrics({
            "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
            "test_macro_precision": metrics["macro_precision"], "test_macro_recall": metrics["macro_recall"],
        })
        mlflow_client.log_image(_png_array(evaluation.confusion_png), "evaluation/confusion_matrix.png")
        mlflow_client.log_dict(metrics, "evaluation/metrics.json")

    per_class = markdown_table(metrics["per_class"], ["name", "precision", "recall", "f1", "support"])
    return dg.MaterializeResult(metadata={
        "model_uri": trained["model_uri"],
        "mlflow_run_id": trained["mlflow_run_id"],
        "dataset_version": int(trained["dataset_version"]),
        "accuracy": float(metrics["accuracy"]),
        "macro_precision": float(metrics["macro_precision"]),
        "macro_recall": float(metrics["macro_recall"]),
        "macro_f1": float(metrics["macro_f1"]),
        "test_objects": metrics["num_samples"],
        "test_images": evaluation.num_images,
        "per_class": dg.MetadataValue.md(per_class),
        "confusion_matrix": dg.MetadataValue.md(png_data_uri_markdown(evaluation.confusion_png, "confusion matrix")),
        "confusion_matrix_counts": dg.MetadataValue.json(metrics["confusion_matrix"]),
    })


def _png_array(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))
