import base64
import datetime as dt
import re
from html.parser import HTMLParser

import pyarrow as pa
import pytest

from cv_pipeline.evaluation.error_analysis import analyze_detection_errors
from cv_pipeline.evaluation.plots import error_breakdown_png
from cv_pipeline.evaluation.report import (
    PER_CLASS_SCHEMA,
    PER_IMAGE_SCHEMA,
    RUN_SCHEMA,
    ImagesSection,
    MetricsSection,
    NotesSection,
    ReportImage,
    TableSection,
    html_report,
    per_class_table,
    per_image_table,
    write_report,
)

PNG = error_breakdown_png({"tp": 3, "background": 1})


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse(page):
    parser = Elements()
    parser.feed(page)
    return parser


def sample_report():
    return html_report(
        "Detector <v2> & friends",
        [
            MetricsSection("Headline", {"mAP": 0.41234567, "mAP@50": 0.6, "images": 120, "note": None}),
            TableSection("Per class", {"cat": {"ap": 0.5, "num_gt": 10}, "<dog>": {"ap": float("nan")}}, "class"),
            TableSection("Worst images", [{"image_id": 7, "errors": 4}, {"image_id": 9, "errors": 3, "extra": "x"}]),
            TableSection("Settings", {"min_score": 0.05, "iou_type": "bbox"}),
            TableSection("Nothing", []),
            ImagesSection("Plots", [ReportImage(PNG, "errors <by type>"), (PNG, "again")]),
            NotesSection("Notes", ["<script>alert(1)</script>", "plain & simple"]),
            NotesSection("Summary", "One paragraph."),
        ],
    )


def test_html_report_escapes_every_text():
    page = sample_report()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Detector &lt;v2&gt; &amp; friends</title>" in page
    assert "&lt;dog&gt;" in page and "errors &lt;by type&gt;" in page
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert parsed.tags.count("section") == 8


def test_html_report_tables_and_numbers():
    page = sample_report()
    assert '<th>mAP</th><td class="number">0.4123</td>' in page
    assert "<th>class</th><th>ap</th><th>num_gt</th>" in page
    assert '<td>&lt;dog&gt;</td><td class="number">n/a</td><td></td>' in page  # missing cell is empty
    assert "<th>image_id</th><th>errors</th><th>extra</th>" in page
    assert "<th>name</th><th>value</th>" in page and "<td>bbox</td>" in page
    assert "No rows." in page


def test_html_report_is_self_contained_with_images_embedded():
    page = sample_report()
    parsed = parse(page)
    sources = [value for name, value in parsed.attributes if name in ("src", "href")]
    assert len(sources) == 2
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]) == PNG
    assert "http" not in page.lower()
    assert not {"link", "script", "iframe"} & set(parsed.tags)
    assert "<style>" in page


def test_html_report_rejects_bad_sections():
    with pytest.raises(ValueError, match="not PNG bytes"):
        html_report("t", [ImagesSection("Plots", [(b"GIF89a", "gif")])])
    with pytest.raises(ValueError, match=r"sections\[0\] must be a report section"):
        html_report("t", [{"title": "x"}])
    with pytest.raises(ValueError, match="row 0 must be a dict"):
        html_report("t", [TableSection("x", [1, 2])])


def test_write_report(tmp_path):
    path = write_report(tmp_path / "nested" / "report.html", sample_report())
    assert path.read_text(encoding="utf-8") == sample_report()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


RUN = {
    "model_name": "detector",
    "model_version": 3,
    "run_id": "abc123",
    "task": "detection",
    "split": "test",
    "dataset_version": "12",
    "evaluated_at": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
}


def test_per_image_table_from_error_analysis_rows():
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cat"}],
    }
    analysis = analyze_detection_errors(gt, [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])
    table = per_image_table(analysis.per_image(), RUN)
    assert table.schema == PER_IMAGE_SCHEMA
    assert table.num_rows == 2
    rows = table.to_pylist()
    assert rows[0]["model_version"] == "3"
    assert rows[0]["evaluated_at"] == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc)
    assert rows[0]["missed"] == 1 and rows[1]["fp_background"] == 1
    assert rows[0]["label"] is None and rows[0]["extra"] is None

    classes = per_class_table(analysis.per_class_rows(), RUN)
    assert classes.schema == PER_CLASS_SCHEMA
    assert classes.to_pylist()[0]["class_name"] == "cat"


def test_tables_keep_one_schema_across_tasks():
    run = {**RUN, "task": "classification", "model_version": None}
    table = per_image_table(
        [{"image_id": 5, "annotation_id": 51, "label": 2, "prediction": 2, "correct": True, "confidence": 0.9,
          "extra": {"margin": 0.4}}],
        run,
    )  # fmt: skip
    assert table.schema == PER_IMAGE_SCHEMA
    assert table.to_pylist()[0]["extra"] == [("margin", 0.4)]
    assert table.column("model_version").to_pylist() == [None]
    empty = per_class_table([], RUN)
    assert empty.schema == PER_CLASS_SCHEMA and empty.num_rows == 0
    assert PER_IMAGE_SCHEMA.names[: len(RUN_SCHEMA)] == RUN_SCHEMA.names
    assert PER_CLASS_SCHEMA.names[: len(RUN_SCHEMA)] == RUN_SCHEMA.names


def test_tables_write_to_delta(tmp_path):
    from deltalake import DeltaTable, write_deltalake

    rows = [{"class_id": 1, "class_name": "cat", "ap": 0.5, "precision": 0.7, "extra": {"ap_small": 0.1}}]
    write_deltalake(str(tmp_path / "per_class"), per_class_table(rows, RUN), partition_by=["task"])
    back = DeltaTable(str(tmp_path / "per_class")).to_pyarrow_table()
    assert back.num_rows == 1
    assert back.to_pylist()[0]["ap"] == 0.5
    assert set(back.schema.names) == set(PER_CLASS_SCHEMA.names)


def test_tables_reject_bad_rows_and_run_columns():
    with pytest.raises(ValueError, match=r"rows\[0\] has columns \['mystery'\]"):
        per_image_table([{"image_id": 1, "mystery": 2}], RUN)
    with pytest.raises(ValueError, match="needs a value for 'image_id'"):
        per_image_table([{"tp": 1}], RUN)
    with pytest.raises(ValueError, match="column 'tp'"):
        per_image_table([{"image_id": 1, "tp": "three"}], RUN)
    with pytest.raises(ValueError, match=r"missing \['split'\]"):
        per_image_table([], {k: v for k, v in RUN.items() if k != "split"})
    with pytest.raises(ValueError, match="timezone-aware"):
        per_image_table([], {**RUN, "evaluated_at": dt.datetime(2024, 5, 1)})
    with pytest.raises(ValueError, match=r"run_columns\['task'\] must not be None"):
        per_class_table([], {**RUN, "task": None})
    with pytest.raises(ValueError, match=r"rows\[0\]\['extra'\]"):
        per_class_table([{"class_id": 1, "extra": 3.0}], RUN)
    assert isinstance(per_class_table([{"class_id": 1}], RUN), pa.Table)
    assert re.search("per-class", str(pytest.raises(ValueError, per_class_table, [{"class_id": "x"}], RUN).value))
