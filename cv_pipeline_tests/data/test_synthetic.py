"""Tests for the deterministic synthetic COCO shapes generator."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cv_pipeline.data import synthetic
from cv_pipeline.data.synthetic import (
    generate_batch,
    main,
    write_bad_json_batch,
    write_defective_batch,
    write_incomplete_batch,
)
from cv_pipeline_tests.samples import SAMPLES

# The command documented in data_samples/README.md.
SAMPLE_ARGS = ["--batches", "2", "--images-per-batch", "110", "--seed", "7"]

EXPECTED_CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "round"},
    {"id": 2, "name": "square", "supercategory": "polygon"},
    {"id": 4, "name": "triangle", "supercategory": "polygon"},
    {"id": 5, "name": "hexagon", "supercategory": "polygon"},
    {"id": 7, "name": "star", "supercategory": "symbol"},
    {"id": 9, "name": "cross", "supercategory": "symbol"},
]


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(batch_dir: Path) -> dict:
    return json.loads((batch_dir / "annotations.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, dict, dict]:
    batch_dir = tmp_path_factory.mktemp("landing") / "batch_x"
    summary = generate_batch(batch_dir, num_images=40, seed=123, first_image_id=500001, first_annotation_id=5000001)
    return batch_dir, _load(batch_dir), summary


@pytest.fixture(scope="module")
def defective(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defective")
    synthetic.write_defective_samples(out, seed=7)
    return out


def test_deterministic_byte_identical(tmp_path: Path) -> None:
    kwargs = dict(num_images=14, seed=5, first_image_id=1, first_annotation_id=1)
    generate_batch(tmp_path / "a", **kwargs)
    generate_batch(tmp_path / "b", **kwargs)
    generate_batch(tmp_path / "c", **{**kwargs, "seed": 6})
    a, b, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert a == b
    assert a != c


def test_loads_with_pycocotools(batch) -> None:
    batch_dir, doc, summary = batch
    coco = COCO(str(batch_dir / "annotations.json"))
    assert len(coco.imgs) == 40 == summary["images"]
    assert len(coco.anns) == len(doc["annotations"]) == summary["annotations"]
    for ann in coco.anns.values():
        m = coco.annToMask(ann)
        img = coco.imgs[ann["image_id"]]
        assert m.shape == (img["height"], img["width"])
        assert int(m.sum()) == ann["area"]
    assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
    assert {"description", "version", "year", "contributor", "date_created"} <= set(doc["info"])
    assert 1 <= len(doc["licenses"]) <= 2 and all({"id", "name", "url"} <= set(lic) for lic in doc["licenses"])
    licence_ids = {lic["id"] for lic in doc["licenses"]}
    for img in doc["images"]:
        assert {"id", "width", "height", "file_name", "license", "date_captured"} <= set(img)
        assert img["license"] in licence_ids


def test_images_on_disk_match_json(batch) -> None:
    batch_dir, doc, summary = batch
    formats = Counter()
    for img in doc["images"]:
        path = batch_dir / "images" / img["file_name"]
        with Image.open(path) as im:
            im.load()
            assert im.size == (img["width"], img["height"])
            assert im.mode == "RGB"
            formats[im.format] += 1
        assert {".jpg": "JPEG", ".png": "PNG"}[path.suffix] == im.format
        assert 160 <= img["width"] <= 320 and 160 <= img["height"] <= 320
    assert formats["JPEG"] > formats["PNG"] > 0
    assert formats["JPEG"] == summary["jpeg"]
    assert any(img["file_name"].startswith("sub/") for img in doc["images"])
    # Nothing on disk that the JSON does not reference.
    on_disk = {p.relative_to(batch_dir / "images").as_posix() for p in (batch_dir / "images").rglob("*") if p.is_file()}
    assert on_disk == {img["file_name"] for img in doc["images"]}


def test_polygons_bboxes_areas(batch) -> None:
    _, doc, _ = batch
    images = {img["id"]: img for img in doc["images"]}
    boxes_per_image: dict[int, list] = {}
    for ann in doc["annotations"]:
        img = images[ann["image_id"]]
        h, w = img["height"], img["width"]
        x, y, bw, bh = ann["bbox"]
        assert bw > 0 and bh > 0
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        if ann["iscrowd"]:
            continue
        boxes_per_image.setdefault(img["id"], []).append(ann["bbox"])
        (poly,) = ann["segmentation"]
        xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
        assert len(poly) % 2 == 0 and len(poly) >= 6
        assert all(v == round(v, 2) for v in poly)
        assert xs.min() >= 0 and xs.max() <= w and ys.min() >= 0 and ys.max() <= h
        assert ann["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()], abs=0.011)
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
        assert ann["area"] == float(mask_utils.area(rle))
        if ann["category_id"] == 1:
            assert len(poly) == 64  # circle: a 32-gon
    # 1-5 objects per non-empty image, never overlapping.
    for boxes in boxes_per_image.values():
        assert 1 <= len(boxes) <= 5
        for i, (x0, y0, w0, h0) in enumerate(boxes):
            for x1, y1, w1, h1 in boxes[i + 1:]:
                assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0


def test_crowd_rle(batch) -> None:
    _, doc, summary = batch
    images = {img["id"]: img for img in doc["images"]}
    crowd = [a for a in doc["annotations"] if a["iscrowd"] == 1]
    assert 2 <= len(crowd) <= 3
    assert summary["crowd"] == len(crowd)
    for ann in crowd:
        img = images[ann["image_id"]]
        h, w = img["height"], img["width"]
        seg = ann["segmentation"]
        assert isinstance(seg, dict) and isinstance(seg["counts"], list) and seg["size"] == [h, w]
        assert sum(seg["counts"]) == h * w
        m = mask_utils.decode(mask_utils.frPyObjects(seg, h, w))
        assert m.shape == (h, w)
        assert int(m.sum()) == ann["area"]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        assert ann["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
        assert ann["category_id"] in {c["id"] for c in EXPECTED_CATEGORIES}


def test_rle_uncompressed_roundtrip() -> None:
    rng = np.random.default_rng(0)
    for first in (0, 1):
        m = rng.random((7, 5)) > 0.5
        m[0, 0] = bool(first)
        rle = synthetic.rle_uncompressed(m)
        assert rle["size"] == [7, 5]
        assert rle["counts"][0] == (0 if first else rle["counts"][0])
        assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5)).astype(bool), m)


def test_empty_images_ids_and_sizes(batch) -> None:
    _, doc, summary = batch
    annotated = {a["image_id"] for a in doc["annotations"]}
    empty = [img for img in doc["images"] if img["id"] not in annotated]
    assert len(empty) == summary["empty_images"] >= 1
    assert [img["id"] for img in doc["images"]] == list(range(500001, 500041))
    ann_ids = [a["id"] for a in doc["annotations"]]
    assert ann_ids == list(range(5000001, 5000001 + len(ann_ids)))
    areas = [a["area"] for a in doc["annotations"] if not a["iscrowd"]]
    small = sum(a < 32**2 for a in areas)
    large = sum(a > 96**2 for a in areas)
    assert small >= 1 and large >= 1
    assert len(areas) - small - large > len(areas) / 2
    assert summary["size_classes"] == {"small": small, "medium": len(areas) - small - large, "large": large}


def test_categories(batch, defective) -> None:
    _, doc, _ = batch
    assert doc["categories"] == EXPECTED_CATEGORIES == synthetic.CATEGORIES
    assert _load(defective / "batch_incomplete")["categories"] == EXPECTED_CATEGORIES
    assert {a["category_id"] for a in doc["annotations"]} <= {c["id"] for c in EXPECTED_CATEGORIES}


def test_success_marker(batch, tmp_path: Path) -> None:
    batch_dir, _, _ = batch
    assert (batch_dir / "_SUCCESS").read_bytes() == b""
    generate_batch(tmp_path / "b", num_images=2, seed=1, first_image_id=1, first_annotation_id=1, write_success=False)
    assert not (tmp_path / "b" / "_SUCCESS").exists()
    assert (tmp_path / "b" / "annotations.json").exists()


def test_defective_batch_matches_defects_json(defective: Path) -> None:
    batch_dir = defective / "batch_defective"
    assert (batch_dir / "_SUCCESS").exists()
    doc = _load(batch_dir)
    defects = json.loads((batch_dir / "defects.json").read_text())
    md = (batch_dir / "DEFECTS.md").read_text()
    codes = Counter(d["defect"] for d in defects)
    assert codes == {
        "unknown_category": 1,
        "unknown_image": 1,
        "image_missing": 1,
        "image_undecodable": 2,
        "bbox_outside_image": 1,
        "duplicate_annotation_id": 1,
    }
    images = {img["id"]: img for img in doc["images"]}
    cat_ids = {c["id"] for c in doc["categories"]}
    ann_by_id: dict[int, list] = {}
    for ann in doc["annotations"]:
        ann_by_id.setdefault(ann["id"], []).append(ann)
    for d in defects:
        assert set(d) == {"defect", "record_type", "id", "description"}
        assert str(d["id"]) in md and d["defect"] in md
        code, rid = d["defect"], d["id"]
        if d["record_type"] == "image":
            path = batch_dir / "images" / images[rid]["file_name"]
            if code == "image_missing":
                assert not path.exists()
                assert any(a["image_id"] == rid for a in doc["annotations"])
            else:
                assert path.stat().st_size in (0, 100)
                with pytest.raises(Exception):
                    with Image.open(path) as im:
                        im.load()
            continue
        (ann, *rest) = ann_by_id[rid]
        if code == "duplicate_annotation_id":
            assert len(rest) == 1
            continue
        assert rest == []
        if code == "unknown_category":
            assert ann["category_id"] not in cat_ids
        elif code == "unknown_image":
            assert ann["image_id"] not in images
        elif code == "bbox_outside_image":
            x, _, w, _ = ann["bbox"]
            assert x + w > images[ann["image_id"]]["width"] + 20
    truncated = [d for d in defects if d["defect"] == "image_undecodable" and "100 bytes" in d["description"]]
    assert len(truncated) == 1 and images[truncated[0]["id"]]["file_name"].endswith(".jpg")
    # Exactly the listed records are broken; the rest is valid.
    assert len([i for i, anns in ann_by_id.items() if len(anns) > 1]) == 1
    assert sum(a["category_id"] not in cat_ids for a in doc["annotations"]) == 1
    assert sum(a["image_id"] not in images for a in doc["annotations"]) == 1


def test_bad_json_and_incomplete_batches(defective: Path, tmp_path: Path) -> None:
    bad = defective / "batch_bad_json"
    assert (bad / "_SUCCESS").exists()
    with pytest.raises(json.JSONDecodeError):
        json.loads((bad / "annotations.json").read_text())
    (image,) = [p for p in (bad / "images").rglob("*") if p.is_file()]
    with Image.open(image) as im:
        im.load()
    incomplete = defective / "batch_incomplete"
    assert not (incomplete / "_SUCCESS").exists()
    doc = _load(incomplete)
    assert len(doc["images"]) == 2
    assert all((incomplete / "images" / img["file_name"]).is_file() for img in doc["images"])
    # The public helpers write into any folder.
    out = tmp_path
    write_bad_json_batch(out / "bj", seed=1)
    write_incomplete_batch(out / "inc", seed=1)
    assert write_defective_batch(out / "def", seed=3)["defects"]


def test_existing_folder_is_an_error(tmp_path: Path, capsys) -> None:
    target = tmp_path / "batch"
    generate_batch(target, num_images=1, seed=1, first_image_id=1, first_annotation_id=1)
    with pytest.raises(FileExistsError, match="batch"):
        generate_batch(target, num_images=1, seed=1, first_image_id=1, first_annotation_id=1)
    generate_batch(target, num_images=2, seed=1, first_image_id=1, first_annotation_id=1, overwrite=True)
    assert len(_load(target)["images"]) == 2

    argv = ["--out", str(tmp_path / "landing"), "--batches", "2", "--images-per-batch", "2", "--seed", "3"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert str(tmp_path / "landing" / "batch_0001") in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_cli_batches_and_id_offsets(tmp_path: Path) -> None:
    out = tmp_path / "landing"
    assert main(["--out", str(out), "--batches", "2", "--images-per-batch", "3", "--seed", "3",
                 "--defective", str(tmp_path / "defective")]) == 0
    docs = [_load(out / "batch_0001"), _load(out / "batch_0002")]
    assert [img["id"] for img in docs[0]["images"]] == [100001, 100002, 100003]
    assert [img["id"] for img in docs[1]["images"]] == [200001, 200002, 200003]
    assert all(a["id"] > 1_000_000 and a["id"] < 2_000_000 for a in docs[0]["annotations"])
    assert all(a["id"] > 2_000_000 and a["id"] < 3_000_000 for a in docs[1]["annotations"])
    assert sorted(p.name for p in (tmp_path / "defective").iterdir()) == [
        "batch_bad_json", "batch_defective", "batch_incomplete",
    ]


def test_committed_samples_match_fresh_generation(tmp_path: Path) -> None:
    """data_samples/ must equal what the documented command produces (catches drift)."""
    assert (SAMPLES / "landing" / "batch_0001" / "_SUCCESS").exists(), "data_samples/landing is missing"
    assert main(["--out", str(tmp_path / "landing"), *SAMPLE_ARGS, "--defective", str(tmp_path / "defective")]) == 0
    for sub in ("landing", "defective"):
        fresh, committed = _hashes(tmp_path / sub), _hashes(SAMPLES / sub)
        assert sorted(committed) == sorted(fresh), f"data_samples/{sub}: file lists differ"
        drift = [name for name in fresh if fresh[name] != committed[name]]
        assert drift == [], f"data_samples/{sub} differs from a fresh generation: {drift[:10]}"
    for batch_id in ("batch_0001", "batch_0002"):
        assert (SAMPLES / "landing" / batch_id / "annotations.json").read_bytes() == (
            tmp_path / "landing" / batch_id / "annotations.json"
        ).read_bytes()
