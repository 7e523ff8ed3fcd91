"""Constants the tests share, in a module without side effects: test modules import these from
here, never from conftest (importing `cv_pipeline_tests.conftest` runs conftest a second time,
under another module name, and re-points CV_PIPELINE_HOME at a second temporary folder)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "data_samples"
INGESTED_TABLES = ("coco_images", "coco_annotations", "coco_categories")
# The end-to-end run's monitoring (its `cv-pipeline monitor` too): four endpoints each judge a clean
# window at the false-alarm rate alpha, so at the default 0.05 about one run in six would see a false
# alarm somewhere (1 - 0.95^4); a stricter alpha keeps the test's verdicts those of the data.
E2E_MONITORING_ENV = {"CV_PIPELINE_DRIFT_ALPHA": "0.001"}


def gated_lake_copy(source: Path, target: Path) -> Path:
    """A copy of an ingested lake (the `ingested_lake` fixture's) with a quality gate: batch_0001
    validated, batch_0002 held back; returns its folder."""
    import shutil

    import pyarrow as pa

    from cv_pipeline.data.delta_io import append_rows

    shutil.copytree(source, target)
    append_rows(pa.table({
        "batch_id": ["batch_0001", "batch_0002"], "status": ["validated", "held_back"],
        "failed_checks": ["[]", "[]"],
        "status_message": ["every blocking check passed",
                           "held back: failed blocking checks annotations_bbox_inside_image"],
    }), target / "coco_batches")
    return target
