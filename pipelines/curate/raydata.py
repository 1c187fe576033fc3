"""Ray Data and Parquet helpers of the curate stage: its settings, reading back what a phase wrote, and
counting written files without loading them.

Each phase of ``raylora curate configs/demo.yaml`` writes Parquet under ``<output>/_work`` and the next
reads it back, so the pipeline streams instead of holding rows in RAM; the driver counts from the files'
key columns and footers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.curate.reasons import KEPT


@contextmanager
def shuffle_partitions(count: int) -> Iterator[None]:
    """Sort-based shuffles with a partition per CPU: Ray Data's default of 200 partitions is far too many
    tiny tasks on a small cluster, and its hash shuffle starts actor pools that take long to come up."""
    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    saved = ctx.min_parallelism, ctx.shuffle_strategy
    ctx.min_parallelism, ctx.shuffle_strategy = count, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.min_parallelism, ctx.shuffle_strategy = saved


@contextmanager
def ray_data_logs(verbose: bool) -> Iterator[None]:
    """Ray Data's progress bars and per-execution INFO logs only when ``verbose``."""
    import logging

    from ray.data.context import DataContext

    ctx, logger = DataContext.get_current(), logging.getLogger("ray.data")
    saved = ctx.enable_progress_bars, ctx.enable_auto_log_stats, logger.level
    if not verbose:
        ctx.enable_progress_bars, ctx.enable_auto_log_stats = False, False
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.enable_auto_log_stats = saved[:2]
        logger.setLevel(saved[2])


def read_parquet_dir(path: str | Path, schema: pa.Schema) -> Any:
    """The Parquet files a Ray write left in ``path``; an empty dataset of ``schema`` when it wrote none."""
    import ray.data

    return ray.data.read_parquet(str(path)) if any(Path(path).glob("*.parquet")) else \
        ray.data.from_arrow(schema.empty_table())


def union(datasets: list[Any]) -> Any:
    """One dataset of all of ``datasets`` (Ray's ``union`` needs at least one to call it on)."""
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def parquet_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.parquet"))


def scan(files: list[str], columns: list[str], kept_only: bool = False) -> Iterator[pa.Table]:
    """Stream columns of Parquet files a row group at a time (the driver never holds a whole column);
    ``kept_only`` skips the rows with a drop reason (needs the ``reason`` column)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=65_536):
            table = pa.Table.from_batches([batch])
            yield table.filter(pc.equal(table.column("reason"), KEPT)) if kept_only else table


def count_by(files: list[str], keys: list[str]) -> Counter[tuple[str, ...]]:
    """Rows per key combination, counted by Arrow group-bys over the key columns only."""
    totals: Counter[tuple[str, ...]] = Counter()
    for table in scan(files, keys):
        counts = table.group_by(keys).aggregate([([], "count_all")])
        for row in counts.to_pylist():
            totals[tuple(row[k] for k in keys)] += row["count_all"]
    return totals


def written_rows(files: list[str]) -> int:
    """Rows in Parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in files)


def repeated_values(files: list[str], column: str, examples: int = 5) -> dict[str, Any]:
    """The values of ``column`` that more than one row of ``files`` holds (nulls aside): how many, on how many
    rows, and the first few with their counts. A Ray Data group-by counts them, so no process holds them all."""
    import ray.data
    from ray.data.expressions import col

    found: dict[str, Any] = {"ids": 0, "rows": 0, "examples": {}}
    if not files:
        return found
    counts = (ray.data.read_parquet(files, columns=[column]).filter(expr=col(column).is_not_null())
              .groupby(column).count())
    for batch in counts.iter_batches(batch_format="pyarrow"):
        values, repeats = batch.column(column).to_pylist(), batch.column(1).to_pylist()
        for value, n in zip(values, repeats, strict=True):
            if n > 1:
                found["ids"], found["rows"] = found["ids"] + 1, found["rows"] + n
                if len(found["examples"]) < examples:
                    found["examples"][value] = n
    return found
