"""Ray Data and Parquet helpers of the curate stage: its settings, reading back what a phase wrote, and
counting written files without loading them.

The read pass of ``raylora curate configs/demo.yaml`` writes Parquet under ``<output>/_work`` and the
later phases read it back, so the pipeline streams instead of holding rows in RAM; the driver counts from
the files' key columns and footers.
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


def read_parquet_dir(path: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> Any:
    """The Parquet files a Ray write left in ``path`` (only ``columns`` of them, when given); an empty dataset
    of ``schema`` when it wrote none."""
    import ray.data

    return ray.data.read_parquet(str(path), columns=columns) if any(Path(path).glob("*.parquet")) else \
        ray.data.from_arrow(schema.empty_table())


class PartWriter:
    """Writes tables into ``directory/part-NNNNN.parquet`` files of about ``rows_per_file`` rows each, as they
    stream past (the driver holds one table at a time)."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_file: int) -> None:
        self.directory, self.schema, self.rows_per_file = directory, schema, rows_per_file
        self.files: list[str] = []
        self.writer: Any = None
        self.rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return
        if self.writer is None or self.rows_in_file >= self.rows_per_file:
            self.close()
            self.directory.mkdir(parents=True, exist_ok=True)
            self.files.append(str(self.directory / f"part-{len(self.files):05d}.parquet"))
            self.writer, self.rows_in_file = pq.ParquetWriter(self.files[-1], self.schema), 0
        self.writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows_in_file += table.num_rows

    def close(self) -> list[str]:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.files


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
    rows, and the smallest few with their counts. Counted by Arrow on the driver over that one column."""
    import pyarrow.compute as pc

    found: dict[str, Any] = {"ids": 0, "rows": 0, "examples": {}}
    values = [table.column(column) for table in scan(files, [column])]
    if not values:
        return found
    counts = pc.value_counts(pa.chunked_array(values).drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    found["ids"], found["rows"] = len(repeated), int(pc.sum(repeated.field("counts")).as_py() or 0)
    first = repeated.take(pc.sort_indices(repeated.field("values"))[:examples])
    found["examples"] = dict(zip(first.field("values").to_pylist(), first.field("counts").to_pylist(), strict=True))
    return found
