"""Jobs: ingest one landing batch; train-evaluate-register-serve on everything ingested."""

import dagster as dg

from cv_pipeline.defs.partitions import landing_batches

ingest_job = dg.define_asset_job(
    "ingest_batch",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=landing_batches,
    description="Ingest one landing batch into the COCO Delta tables and run its quality checks.",
)

training_job = dg.define_asset_job(
    "train_and_deploy",
    selection=dg.AssetSelection.groups("training", "evaluation", "deployment"),
    description="Build the training dataset, then for every task train, evaluate, register, compare, promote and serve.",
)

tuning_job = dg.define_asset_job(
    "tune",
    selection=dg.AssetSelection.assets("hpo_study"),
    description="Hyperparameter study of one task (Ray Tune, ASHA); a model asset with use_best_hpo_config "
                "then trains with the best configuration found.",
)

batch_inference_job = dg.define_asset_job(
    "score_batch",
    selection=dg.AssetSelection.assets("batch_predictions"),
    partitions_def=landing_batches,
    description="Score one validated landing batch with every task's champion into the predictions table.",
)
