"""Delta Lake reads and writes: Spark for writing batches, delta-rs for JVM-free reads and versions."""

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
    table on first write); returns the new table version. Other batches' rows are untouched."""
    validate_batch_id(batch_id)
    path = str(path)
    writer = df.write.format("delta").mode("overwrite")
    if is_delta_table(path):
        writer = writer.option("replaceWhere", f"batch_id = '{batch_id}'")
    else:
        writer = writer.partitionBy("batch_id")
    writer.save(path)
    return table_version(path)


def append_rows(df, path: str | Path) -> int:
    path = str(path)
    writer = df.write.format("delta").mode("append")
    if not is_delta_table(path):
        writer = writer.partitionBy("batch_id")
    writer.save(path)
    return table_version(path)


def table_version(path: str | Path) -> int | None:
    """Current version of a Delta table, or None if there is no table at `path`."""
    if not is_delta_table(path):
        return None
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def read_table(path: str | Path, version: int | None = None, columns: list[str] | None = None, filters=None):
    """A Delta table (optionally at an older version, by time travel) as a pyarrow Table, without a JVM."""
    if not is_delta_table(path):
        raise FileNotFoundError(f"no Delta table at {path}")
    from deltalake import DeltaTable

    table = DeltaTable(str(path), version=version)
    return table.to_pyarrow_table(columns=columns, filters=filters)
