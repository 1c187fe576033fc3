"""What curation's phases hand each other: the rows still kept and every row dropped so far (``Rows``), the
dropped rows in files a phase wrote, and the counts taken from the written files (``Accounts``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.curate.raydata import scan
from pipelines.curate.reasons import KEPT
from pipelines.errors import StageError

DROPPED_SCHEMA = pa.schema([("id", pa.string()), ("user_id", pa.string()), ("source", pa.string()),
                            ("reason", pa.string()), ("detail", pa.string())])


@dataclass(frozen=True)
class Rows:
    """What a phase hands the next: ``kept``, a Ray Dataset of the rows no check has dropped yet;
    ``files``, the Parquet files holding them (beside rows dropped with a reason, and rows whose ids are in
    ``dropped_ids``: dropped by a later phase that did not rewrite the files); ``dropped``, every row dropped
    so far, each with its reason: Ray Datasets, Arrow tables, or ``DroppedInFiles``."""

    kept: Any
    files: list[str]
    dropped: list[Any]
    dropped_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    filter_seconds: dict[str, float] = field(default_factory=dict)  # the read pass's, by filter name


@dataclass(frozen=True)
class DroppedInFiles:
    """The rows with a drop reason in Parquet files a phase wrote, read without their conversations."""

    files: list[str]

    def tables(self) -> Iterator[pa.Table]:
        for table in scan(self.files, list(DROPPED_SCHEMA.names)):
            yield table.filter(pc.not_equal(table.column("reason"), KEPT))


@dataclass(frozen=True)
class KeptKeys:
    """The kept rows' internal keys, split keys and digests: all the driver needs to cut and hash the split."""

    ids: pa.Array
    split_keys: np.ndarray
    digests: pa.Array


@dataclass(frozen=True)
class Accounts:
    """A run's counts, taken from the written files: rows read per source, rows dropped per source and
    reason (and one example each), the kept rows' keys, and the user ids on several rows."""

    read_by_source: dict[str, int]
    dropped_by_source_reason: Counter[tuple[str, ...]]
    dropped_files: list[str]
    examples: dict[str, str]
    kept: KeptKeys
    repeated_user_ids: dict[str, Any]

    @property
    def num_read(self) -> int:
        return sum(self.read_by_source.values())

    @property
    def num_kept(self) -> int:
        return len(self.kept.ids)

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (_, reason), count in self.dropped_by_source_reason.items():
            totals[reason] += count
        return dict(sorted(totals.items()))

    def per_source(self, kept_by_source: dict[str, int], names: list[str]) -> dict[str, dict[str, int]]:
        """Read, kept and dropped rows of each source (``names``: every configured one, an empty one too); fails
        unless read = kept + dropped for every one."""
        counts: dict[str, dict[str, int]] = {}
        for source, read in sorted({**dict.fromkeys(names, 0), **self.read_by_source}.items()):
            kept = kept_by_source.get(source, 0)
            lost = sum(n for (src, _), n in self.dropped_by_source_reason.items() if src == source)
            counts[source] = {"read": read, "kept": kept, "dropped": lost}
            if read != kept + lost:
                raise StageError(f"accounting broke for source {source}: read {read} != kept {kept} + dropped {lost}")
        return counts
