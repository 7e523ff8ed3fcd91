"""Delta Lake reads and writes.

A batch is written from wherever its rows are: a pyarrow Table (the ingestion's parsed batch) goes
through delta-rs, straight from Arrow to Parquet with no copy into a JVM; a Spark DataFrame goes
through delta-spark. Both make the same partitioned tables (by `batch_id`), replace one batch with
one atomic commit, and evolve the schema when new columns appear; Spark reads either. Reads and
versions use delta-rs, so training workers need no JVM.
"""

from __future__ import annotations

import re
from pathlib import Path

BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_batch_id(batch_id: str) -> str:
    if not isinstance(batch_id, str) or not BATCH_ID_PATTERN.match(batch_id):
        raise ValueError(
            f"batch id {batch_id!r} must be 1-128 characters of letters, digits, '_', '.', '-' (it names a folder and a partition)"
        )
    return batch_id


def is_delta_table(path: str | Path) -> bool:
    return (Path(path) / "_delta_log").is_dir()


def replace_batch(df, path: str | Path, batch_id: str) -> int:
    """Atomically replace one batch's rows in a Delta table partitioned by `batch_id` (creating the
    table on first write); returns the new table version. Other batches' rows are untouched.
    `df` is a Spark DataFrame or a pyarrow Table."""
    validate_batch_id(batch_id)
    return _write(df, str(path), "overwrite", f"batch_id = '{batch_id}'")


def append_rows(df, path: str | Path, partition_by: tuple[str, ...] = ("batch_id",)) -> int:
    """Append rows (Spark DataFrame or pyarrow Table) to a table (partitioned by `batch_id` unless told)."""
    return _write(df, str(path), "append", None, partition_by)


def _write(df, path: str, mode: str, predicate: str | None, partition_by: tuple[str, ...] = ("batch_id",)) -> int:
    """One commit with delta-rs (Arrow) or delta-spark (DataFrame); a new table is partitioned by
    `partition_by`, an existing one gains new columns (schema merge) instead of failing."""
    exists = is_delta_table(path)
    if _is_arrow(df):
        from deltalake import write_deltalake

        if exists:
            write_deltalake(path, df, mode=mode, predicate=predicate, schema_mode="merge")
        else:
            write_deltalake(path, df, mode=mode, partition_by=list(partition_by) or None)
    else:
        writer = df.write.format("delta").mode(mode).option("mergeSchema", "true")
        if not exists and partition_by:
            writer = writer.partitionBy(*partition_by)
        elif predicate:
            writer = writer.option("replaceWhere", predicate)
        writer.save(path)
    return table_version(path)


def _is_arrow(data) -> bool:
    import pyarrow as pa

    return isinstance(data, pa.Table)


def table_version(path: str | Path) -> int | None:
    """Current version of a Delta table, or None if there is no table at `path`."""
    if not is_delta_table(path):
        return None
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def open_dataset(path: str | Path, version: int | None = None):
    """A Delta table (optionally at an older version, by time travel) as a pyarrow Dataset, without a JVM.

    Its files are read through pyarrow's own local filesystem, not delta-rs' default (a Python
    `FileSystemHandler` behind `pyarrow.fs.PyFileSystem`): with that one every buffer read is a Python
    object, and pyarrow's scan threads drop the last of them a moment after `to_table()` returns. A
    process that exits right after a read (a script, a cron job) then has a scan thread take the GIL
    while the interpreter finalizes; CPython ends that thread inside a C++ destructor and the process
    aborts ("terminate called without an active exception", exit code 134; apache/arrow#36389,
    #49942). With the native filesystem no scan thread ever calls into Python.
    """
    if not is_delta_table(path):
        raise FileNotFoundError(f"no Delta table at {path}")
    import pyarrow.fs as pa_fs
    from deltalake import DeltaTable

    root = Path(path).absolute()
    table = DeltaTable(str(root), version=version)
    return table.to_pyarrow_dataset(filesystem=pa_fs.SubTreeFileSystem(str(root), pa_fs.LocalFileSystem()))


def read_table(path: str | Path, version: int | None = None, columns: list[str] | None = None, filters=None):
    """A Delta table (optionally at an older version, by time travel) as a pyarrow Table, without a JVM.
    `filters`: DNF tuples (`[("batch_id", "=", "b1")]`) or a `pyarrow.compute.Expression`; files that
    cannot match are not read. Reads through `open_dataset`: safe to exit right after."""
    dataset = open_dataset(path, version)
    if filters is not None:
        from pyarrow.parquet import filters_to_expression

        filters = filters_to_expression(filters)
    return dataset.to_table(columns=columns, filter=filters)
