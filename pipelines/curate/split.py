"""The deterministic train / eval split of the kept rows, and the hash that identifies a written split.

    raylora curate configs/demo.yaml data.eval_size=200     # curate writes train/ and eval/ through this

Each kept row gets a split key: a hash of the seed and its identity, which is the user's id when the row
has one and its conversation otherwise, so adding or moving rows in a source leaves the other rows in
their split. Rows with equal split keys (a repeated user id) are ordered by their internal key, which is
unique, so exactly ``num_eval`` rows fall below the cutoff whatever the ids.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow as pa

from pipelines.curate.raydata import scan

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
# `id` is the internal key (unique per row: what the train stage shards and resumes by); `user_id` the
# record's own id, null when it had none
OUTPUT_SCHEMA = pa.schema([("id", pa.string()), ("user_id", pa.string()), ("source", pa.string()),
                           ("messages", MESSAGES_TYPE)])
SPLIT_COLUMNS = ["id", "user_id", "messages", "reason"]
BUCKET_SHIFT = 47  # split keys are 63-bit hashes: their top 16 bits name one of 65536 buckets
DIGEST_MODULUS = 1 << 256
Cutoff = tuple[int, str]  # (split key, internal key): eval holds the rows at or below it


def split_keys(table: pa.Table, seed: int) -> np.ndarray:
    """The split key of each row (needs ``user_id`` and ``messages``): a hash of seed and identity."""
    identities = (f"id:{user_id}" if user_id is not None else f"text:{messages}"
                  for user_id, messages in zip(table.column("user_id").to_pylist(),
                                               table.column("messages").to_pylist(), strict=True))
    return np.fromiter((int.from_bytes(hashlib.sha256(f"{seed}:{identity}".encode("utf-8", "surrogatepass"))
                                       .digest()[:8], "big") >> 1 for identity in identities),
                       dtype=np.int64, count=table.num_rows)


def kept_histogram(kept_files: list[str], seed: int) -> Counter[int]:
    """Kept rows per split-key bucket."""
    histogram: Counter[int] = Counter()
    for table in scan(kept_files, SPLIT_COLUMNS, kept_only=True):
        histogram.update((split_keys(table, seed) >> BUCKET_SHIFT).tolist())
    return histogram


def eval_cutoff(kept_files: list[str], histogram: Counter[int], num_eval: int, seed: int) -> Cutoff:
    """The (split key, internal key) at or below which exactly ``num_eval`` kept rows lie.

    The bucket histogram says which bucket holds the ``num_eval``-th smallest key; only that bucket's
    few rows (about rows / 65536) are kept while the key columns stream past.
    """
    if num_eval == 0:
        return (np.iinfo(np.int64).min, "")  # no row is below the smallest key, nor at it with a key <= ""
    below = 0
    for bucket in sorted(histogram):
        if below + histogram[bucket] >= num_eval:
            break
        below += histogram[bucket]
    candidates: list[Cutoff] = []
    for table in scan(kept_files, SPLIT_COLUMNS, kept_only=True):
        keys, ids = split_keys(table, seed), table.column("id").to_pylist()
        candidates.extend((int(keys[i]), ids[i]) for i in np.flatnonzero((keys >> BUCKET_SHIFT) == bucket))
    return sorted(candidates)[num_eval - below - 1]


def is_eval(table: pa.Table, seed: int, cutoff: Cutoff) -> np.ndarray:
    """Which rows of ``table`` the eval split holds: those at or below the cutoff."""
    keys, (cut_key, cut_id) = split_keys(table, seed), cutoff
    chosen = keys < cut_key
    ids = table.column("id")
    for i in np.flatnonzero(keys == cut_key):  # ties on the split key: the internal key decides
        chosen[i] = ids[int(i)].as_py() <= cut_id
    return chosen


def to_output(batch: pa.Table, seed: int, cutoff: Cutoff) -> pa.Table:
    """Ray UDF: kept rows -> the canonical Parquet schema the train stage reads, plus the ``split`` (train or
    eval) the write partitions on."""
    messages = [json.loads(m) for m in batch.column("messages").to_pylist()]
    split = np.where(is_eval(batch, seed, cutoff), "eval", "train")
    return pa.table({"id": batch.column("id"), "user_id": batch.column("user_id"), "source": batch.column("source"),
                     "messages": pa.array(messages, MESSAGES_TYPE), "split": pa.array(split, pa.string())},
                    schema=OUTPUT_SCHEMA.append(pa.field("split", pa.string())))


def split_hash(split_files: list[str]) -> str:
    """The hash that identifies a written split: sha256 over the row count and the sum of the rows' sha256
    digests of (id, messages) modulo 2^256, which no row order or file layout changes."""
    import pyarrow.parquet as pq

    digest_sum, count = 0, 0
    for path in split_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "messages"], batch_size=65_536):
            for row_id, messages in zip(batch.column("id").to_pylist(), batch.column("messages").to_pylist(),
                                        strict=True):
                text = row_id + "\0" + json.dumps(messages, ensure_ascii=False, sort_keys=True)
                digest_sum += int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")
                count += 1
    return hashlib.sha256(f"{count}:".encode() + (digest_sum % DIGEST_MODULUS).to_bytes(32, "big")).hexdigest()
