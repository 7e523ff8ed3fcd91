"""Reading a Delta table and exiting: a fresh interpreter that reads a table through the project's
reader exits with status 0 (delta-rs' default Python filesystem handler left pyarrow scan threads
taking the GIL during interpreter shutdown: "terminate called without an active exception", 134)."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pytest

from cv_pipeline.data.delta_io import append_rows, is_delta_table, open_dataset, read_table

REPO = Path(__file__).resolve().parents[2]

# What a user's script does: import the reader, read, print, exit. Nothing else imported first
# (importing torch, for one, changes the timing enough to hide the abort).
READ_AND_EXIT = """
import sys
from cv_pipeline.data.delta_io import read_table
table = read_table(sys.argv[1])
print(table)
print("ROWS", table.num_rows)
"""


def _tables(lake_dir: Path) -> list[Path]:
    return sorted(path for path in lake_dir.iterdir() if is_delta_table(path))


def test_a_fresh_interpreter_reading_each_table_exits_cleanly(ingested_lake):
    tables = _tables(ingested_lake.lake_dir)
    assert {"coco_images", "coco_annotations", "coco_categories", "training_dataset"} <= {t.name for t in tables}
    for table in tables:
        done = subprocess.run([sys.executable, "-c", READ_AND_EXIT, str(table)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"reading {table.name}: exit {done.returncode}\n{done.stderr[-2000:]}"
        assert "terminate called" not in done.stderr, table.name
        assert f"ROWS {read_table(table).num_rows}" in done.stdout, table.name


def test_scans_read_through_pyarrows_own_filesystem(ingested_lake):
    # The reason the exit is clean: no Python filesystem handler, so no scan thread calls into Python.
    dataset = open_dataset(ingested_lake.lake_dir / "coco_images")
    assert not isinstance(dataset.filesystem, pa_fs.PyFileSystem)
    assert isinstance(dataset.filesystem, pa_fs.SubTreeFileSystem)
    assert isinstance(dataset.filesystem.base_fs, pa_fs.LocalFileSystem)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in table.column_names
                          if pa.types.is_integer(table.schema.field(name).type)
                          or pa.types.is_string(table.schema.field(name).type)])


def test_reads_equal_delta_rs_default_reader(ingested_lake):
    from deltalake import DeltaTable

    for path in _tables(ingested_lake.lake_dir):
        expected = DeltaTable(str(path)).to_pyarrow_table()
        assert _sorted(read_table(path)).equals(_sorted(expected)), path.name
    annotations = ingested_lake.lake_dir / "coco_annotations"
    some = read_table(annotations, columns=["annotation_id", "batch_id"], filters=[("batch_id", "=", "batch_0002")])
    assert some.column_names == ["annotation_id", "batch_id"] and some.num_rows > 0
    assert set(some.column("batch_id").to_pylist()) == {"batch_0002"}
    as_expression = read_table(annotations, columns=["annotation_id"], filters=pc.field("batch_id") == "batch_0002")
    assert sorted(as_expression.column("annotation_id").to_pylist()) == sorted(some.column("annotation_id").to_pylist())


def test_time_travel_and_spark_written_tables_with_escaped_partition_values(spark, tmp_path):
    # Spark and delta-rs escape partition values in folder names; the files must still be found.
    path = tmp_path / "evaluation_rows"
    first = spark.createDataFrame([("a b:c/d%e", 1), ("plain", 2)], "task string, value long")
    append_rows(first, path, partition_by=("task",))
    append_rows(pa.table({"task": ["a b:c/d%e"], "value": pa.array([3], pa.int64())}), path, partition_by=("task",))
    latest = read_table(path)
    assert sorted(zip(latest.column("task").to_pylist(), latest.column("value").to_pylist())) == [
        ("a b:c/d%e", 1), ("a b:c/d%e", 3), ("plain", 2)]
    assert sorted(read_table(path, version=0).column("value").to_pylist()) == [1, 2]
    assert read_table(path, filters=[("task", "=", "a b:c/d%e")]).num_rows == 2
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        read_table(tmp_path / "missing")
