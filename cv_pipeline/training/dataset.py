"""`training_dataset`: a deterministic split manifest pinned to the Delta versions it was built from.

Reads the COCO tables with delta-rs (no JVM), only the batches the quality gate lets through
(`cv_pipeline.data.quality.batch_gate`: status 'validated' in `coco_batches`), keeps one row per
trainable object, assigns each image to train/val/test by a seeded hash of its content (identical
images always share a split, so duplicates cannot leak across splits), and writes the manifest as a
Delta table whose commit carries the source versions, label map and the batches read and held back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cv_pipeline.data.delta_io import read_table, table_version

SOURCE_TABLES = ("coco_images", "coco_annotations", "coco_categories")
SPLITS = ("train", "val", "test")


@dataclass
class DatasetManifest:
    table_path: str
    version: int
    source_versions: dict[str, int]
    labels: list[dict]  # [{"index", "category_id", "name", "supercategory"}]
    split_counts: dict[str, int]
    split_images: dict[str, int]
    seed: int
    fractions: dict[str, float]
    content_hash: str
    extra: dict = field(default_factory=dict)
    # The batches read (None in manifests written before batches were gated), and those left out:
    # [{"batch_id", "failed_checks", "message"}].
    batches: list[str] | None = None
    held_back_batches: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetManifest":
        return cls(**json.loads(text))


def assign_split(content_key: str, seed: int, fractions: dict[str, float]) -> str:
    """train/val/test for one image from a seeded hash of its key: stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{content_key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split in SPLITS:
        cumulative += fractions[split]
        if position < cumulative:
            return split
    return SPLITS[-1]


def resolve_labels(categories: pa.Table) -> list[dict]:
    """One label per category id across batches; a category id with two names is an error."""
    names: dict[int, tuple[str, str | None]] = {}
    for row in categories.to_pylist():
        known = names.setdefault(row["category_id"], (row["name"], row["supercategory"]))
        if known[0] != row["name"]:
            raise ValueError(
                f"coco_categories: category_id {row['category_id']} is named {known[0]!r} in one batch and "
                f"{row['name']!r} in batch {row['batch_id']!r}; batches of a landing zone must share one taxonomy"
            )
    return [
        {"index": index, "category_id": cid, "name": names[cid][0], "supercategory": names[cid][1]}
        for index, cid in enumerate(sorted(names))
    ]


def build_training_dataset(
    lake_dir: str | Path,
    *,
    output_table: str = "training_dataset",
    seed: int = 17,
    fractions: dict[str, float] | None = None,
    min_box_size: float = 4.0,
    versions: dict[str, int] | None = None,
    output_path: str | Path | None = None,
    batches: list[str] | None = None,
) -> DatasetManifest:
    """Build and write the manifest table; `versions` pins the source tables (default: their latest).

    The table goes to `<lake_dir>/<output_table>`, or to `output_path` when given (a split rebuilt
    elsewhere by time travel, `cv_pipeline.deployment.lineage.rebuild`, leaves the lake's own alone).

    Only the batches the quality gate lets through are read (`batch_gate`: status 'validated' in
    `coco_batches`, read at `versions["coco_batches"]` or, by default, after the other tables'
    versions are pinned, so a batch being re-ingested is seen as 'pending'); the others are listed in
    `manifest.held_back_batches`. A lake without a `coco_batches` table has no gate: every batch is read.

    `batches` keeps only those batches' images (each must be ingested and let through by the gate, else
    ValueError naming it and its status); labels still come from every batch the gate lets through, so
    the label indices are those of a manifest of them all. A share of 0 in `fractions` leaves that split
    empty: `{"train": 0, "val": 0, "test": 1}` puts every image in test (a manifest to evaluate on).
    """
    from deltalake import CommitProperties, write_deltalake

    from cv_pipeline.data.quality import BATCHES, batch_gate

    fractions = fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    if set(fractions) != set(SPLITS) or abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
        raise ValueError(f"fractions must give non-negative train, val and test shares summing to 1, got {fractions}")
    lake_dir = Path(lake_dir)
    selected = list(batches) if batches is not None else None
    pinned = {}
    for name in SOURCE_TABLES:
        version = (versions or {}).get(name, table_version(lake_dir / name))
        if version is None:
            raise FileNotFoundError(f"table {name} does not exist under {lake_dir}; ingest a batch first")
        pinned[name] = int(version)
    gate = batch_gate(lake_dir, (versions or {}).get(BATCHES))
    if gate.version is not None:
        pinned[BATCHES] = gate.version

    images = read_table(lake_dir / "coco_images", pinned["coco_images"],
                        columns=["batch_id", "image_id", "file_path", "width", "height", "sha256"])
    present = sorted(set(images.column("batch_id").to_pylist()))
    held_back = [b._asdict() for b in gate.held_back if b.batch_id in present]
    if selected is not None:
        _check_selected(lake_dir, selected, present, gate, pinned["coco_images"])
    if gate.eligible is None:
        batches = present
    else:
        batches = [b for b in present if b in set(gate.eligible)]
        known = set(gate.eligible) | {b.batch_id for b in gate.held_back}
        held_back += [{"batch_id": b, "failed_checks": [], "message": "no coco_batches row: its quality status is "
                       "unknown; re-ingest the batch"} for b in present if b not in known]
        held_back.sort(key=lambda b: b["batch_id"])
        if not batches:
            raise ValueError("training_dataset: no validated batch to train on; held back: " + "; ".join(
                f"{b['batch_id']} ({b['message']})" for b in held_back))
        images = images.filter(pc.is_in(images["batch_id"], value_set=pa.array(batches, pa.string())))
    only = [("batch_id", "in", batches)] if gate.eligible is not None else None
    if selected is not None:
        batches = sorted(set(selected))
        images = images.filter(pc.is_in(images["batch_id"], value_set=pa.array(batches, pa.string())))
    annotations = read_table(lake_dir / "coco_annotations", pinned["coco_annotations"],
                             columns=["batch_id", "annotation_id", "image_id", "category_id", "bbox_x", "bbox_y",
                                      "bbox_w", "bbox_h", "iscrowd"],
                             filters=[("batch_id", "in", batches)] if selected is not None else only)
    categories = read_table(lake_dir / "coco_categories", pinned["coco_categories"],
                            columns=["batch_id", "category_id", "name", "supercategory"], filters=only)
    labels = resolve_labels(categories)
    label_of = {label["category_id"]: label["index"] for label in labels}

    keep = pc.and_(
        pc.equal(annotations["iscrowd"], 0),
        pc.and_(pc.greater_equal(annotations["bbox_w"], min_box_size), pc.greater_equal(annotations["bbox_h"], min_box_size)),
    )
    objects = annotations.filter(keep).join(images, keys=["batch_id", "image_id"], join_type="inner")
    objects = objects.sort_by([("batch_id", "ascending"), ("image_id", "ascending"), ("annotation_id", "ascending")])
    split_of_image = {
        sha: assign_split(sha, seed, fractions) for sha in set(images.column("sha256").to_pylist())
    }
    rows = objects.to_pylist()
    for row in rows:
        row["label"] = label_of[row["category_id"]]
        row["split"] = split_of_image[row["sha256"]]
    table = pa.Table.from_pylist(rows, schema=_manifest_schema())
    content_hash = hashlib.sha256(
        json.dumps([[r["batch_id"], r["annotation_id"], r["sha256"], r["label"], r["split"]] for r in rows]).encode()
    ).hexdigest()

    split_counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    split_images = {s: len({(r["batch_id"], r["image_id"]) for r in rows if r["split"] == s}) for s in SPLITS}
    for split in SPLITS:
        if split_counts[split] == 0 and fractions[split] > 0:
            raise ValueError(f"training_dataset: the {split} split is empty ({len(rows)} objects in all); ingest more data")

    output_path = Path(output_path) if output_path is not None else lake_dir / output_table
    manifest = DatasetManifest(
        table_path=str(output_path), version=-1, source_versions=pinned, labels=labels,
        split_counts=split_counts, split_images=split_images, seed=seed, fractions=fractions,
        content_hash=content_hash, extra={"min_box_size": min_box_size, "objects": len(rows)},
        batches=batches, held_back_batches=held_back,
    )
    write_deltalake(
        str(output_path), table, mode="overwrite", schema_mode="overwrite",
        commit_properties=CommitProperties(custom_metadata={"cv_pipeline.manifest": manifest.to_json()}),
    )
    manifest.version = int(table_version(output_path))
    return manifest


def _check_selected(lake_dir: Path, selected: list[str], present: list[str], gate, images_version: int) -> None:
    """Every batch asked for by name is ingested and let through by the gate, else ValueError naming it."""
    from cv_pipeline.data.quality import BATCHES

    if not selected:
        raise ValueError("training_dataset: batches is empty; name at least one batch or pass None for all")
    for batch_id in selected:
        if gate.eligible is not None and batch_id not in gate.eligible:
            rows = read_table(lake_dir / BATCHES, gate.version, filters=[("batch_id", "=", batch_id)]).to_pylist()
            status = (rows[0].get("status") or "none recorded") if rows else "unknown: no coco_batches row"
            why = next((b.message for b in gate.held_back if b.batch_id == batch_id), "")
            raise ValueError(f"batch {batch_id!r} is not validated (status {status}{': ' + why if why else ''}); "
                             "only validated batches are read")
        if batch_id not in present:
            raise ValueError(f"batch {batch_id!r} has no rows in {lake_dir / 'coco_images'} (version "
                             f"{images_version}); ingested batches: {', '.join(present) or 'none'}")


def _manifest_schema() -> pa.Schema:
    return pa.schema([
        ("batch_id", pa.string()), ("annotation_id", pa.int64()), ("image_id", pa.int64()),
        ("category_id", pa.int64()), ("label", pa.int32()), ("split", pa.string()),
        ("file_path", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()),
        ("bbox_x", pa.float64()), ("bbox_y", pa.float64()), ("bbox_w", pa.float64()), ("bbox_h", pa.float64()),
        ("iscrowd", pa.int32()),
    ])


def load_manifest(table_path: str | Path, version: int | None = None) -> DatasetManifest:
    """The manifest recorded in the commit that wrote `version` of the training_dataset table."""
    from deltalake import DeltaTable

    table = DeltaTable(str(table_path), version=version)
    wanted = table.version()
    for entry in table.history():
        if entry.get("version") == wanted and "cv_pipeline.manifest" in entry:
            manifest = DatasetManifest.from_json(entry["cv_pipeline.manifest"])
            manifest.version = wanted
            return manifest
    raise ValueError(f"{table_path} version {wanted} carries no cv_pipeline manifest in its commit")


def load_split(table_path: str | Path, version: int, split: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    table = read_table(table_path, version, filters=[("split", "=", split)])
    return table.sort_by([("batch_id", "ascending"), ("image_id", "ascending"), ("annotation_id", "ascending")]).to_pylist()
