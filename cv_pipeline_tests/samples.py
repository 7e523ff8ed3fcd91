"""Constants the tests share, in a module without side effects: test modules import these from
here, never from conftest (importing `cv_pipeline_tests.conftest` runs conftest a second time,
under another module name, and re-points CV_PIPELINE_HOME at a second temporary folder)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "data_samples"
INGESTED_TABLES = ("coco_images", "coco_annotations", "coco_categories")
