"""Reading back the kept rows of curation's Parquet parts: columns, dedup keys and shingles of only the rows a
phase needs, a row group at a time (the phases after the read pass work on these, never on whole rows)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.curate.dedup import shingles
from pipelines.curate.raydata import scan


def scan_kept(files: list[str], columns: list[str], dropped_ids: pa.Array | None = None) -> Iterator[pa.Table]:
    """``columns`` of the rows without a reason in ``files``, less ``dropped_ids``, a row group at a time."""
    for table in scan(files, [*columns, "reason"] if "reason" not in columns else columns, kept_only=True):
        if dropped_ids is not None and len(dropped_ids):
            table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=dropped_ids)))
        yield table.select(columns)


def kept_columns(files: list[str], columns: list[str], dropped_ids: pa.Array | None = None) -> pa.Table:
    """``scan_kept`` in one table."""
    tables = list(scan_kept(files, columns, dropped_ids))
    return pa.concat_tables(tables) if tables else pa.table({name: [] for name in columns})


def key_matrix(keys: pa.ChunkedArray) -> np.ndarray:
    """list<int64> bucket keys of kept rows (each row as many) -> a (rows, keys per row) int64 matrix."""
    flat = [chunk.flatten().to_numpy() for chunk in keys.chunks]
    values = np.concatenate(flat) if flat else np.zeros(0, np.int64)
    return values.reshape(len(keys), -1) if len(keys) else np.zeros((0, 0), np.int64)


def shingle_sets(files: list[str], ids: pa.Array, positions: np.ndarray, shingle_words: int) -> dict[int, set[str]]:
    """The shingle sets of the rows ``ids`` (at ``positions``): only these rows' conversations are parsed."""
    position_of = dict(zip(ids.to_pylist(), positions.tolist(), strict=True))
    found: dict[int, set[str]] = {}
    for table in scan(files, ["id", "messages", "reason"], kept_only=True):
        wanted = table.filter(pc.is_in(table.column("id"), value_set=ids))
        for row_id, messages in zip(wanted.column("id").to_pylist(), wanted.column("messages").to_pylist(),
                                    strict=True):
            found[position_of[row_id]] = set(shingles(json.loads(messages), shingle_words))
    return found


def without_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    """Ray UDF: the rows whose id is not in ``ids``."""
    return batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=ids)))
