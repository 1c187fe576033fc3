"""The deterministic train / eval split of the kept rows, and the hash that identifies a written split.

    raylora curate configs/demo.yaml data.eval_size=200     # curate writes train/ and eval/ through this

Each kept row gets a split key: a hash of the seed and its identity, which is the user's id when the row
has one and its conversation otherwise, so adding or moving rows in a source leaves the other rows in
their split. Rows with equal split keys (a repeated user id) are ordered by their internal key, which is
unique, so exactly ``num_eval`` rows fall below the cutoff whatever the ids. The read pass computes each
row's split key, the digest its split's hash sums (``split_columns``) and its conversation in the output
type (``chat``), so the driver cuts, hashes and writes the split with Arrow alone, parsing nothing again.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
# `id` is the internal key (unique per row: what the train stage shards and resumes by); `user_id` the
# record's own id, null when it had none
OUTPUT_SCHEMA = pa.schema([("id", pa.string()), ("user_id", pa.string()), ("source", pa.string()),
                           ("messages", MESSAGES_TYPE)])
SPLIT_KEY, ROW_DIGEST, CHAT = "split_key", "row_digest", "chat"  # columns the read pass adds to each kept row
DIGEST_TYPE = pa.binary(32)
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


def row_digest(row_id: str, messages: list[dict[str, str]]) -> bytes:
    """The sha256 of a kept row as the split hash counts it: its internal key and its conversation."""
    text = row_id + "\0" + json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def split_columns(table: pa.Table, seed: int) -> tuple[pa.Array, pa.Array]:
    """(split key, row digest) of each row of ``table`` (``id``, ``user_id``, ``messages`` as JSON text)."""
    digests = [row_digest(row_id, json.loads(messages)) for row_id, messages in
               zip(table.column("id").to_pylist(), table.column("messages").to_pylist(), strict=True)]
    return pa.array(split_keys(table, seed), pa.int64()), pa.array(digests, DIGEST_TYPE)


def eval_cutoff(keys: np.ndarray, ids: pa.Array, num_eval: int) -> Cutoff:
    """The (split key, internal key) at or below which exactly ``num_eval`` of the rows lie (``keys`` and
    ``ids``: the kept rows' split keys and internal keys)."""
    if num_eval == 0:
        return (np.iinfo(np.int64).min, "")  # no row is below the smallest key, nor at it with a key <= ""
    key = int(np.partition(keys, num_eval - 1)[num_eval - 1])
    below = int((keys < key).sum())
    tied = sorted(ids.take(pa.array(np.flatnonzero(keys == key))).to_pylist())
    return (key, tied[num_eval - below - 1])


def is_eval(keys: np.ndarray, ids: pa.Array, cutoff: Cutoff) -> np.ndarray:
    """Which rows the eval split holds: those at or below the cutoff."""
    cut_key, cut_id = cutoff
    chosen = keys < cut_key
    for i in np.flatnonzero(keys == cut_key):  # ties on the split key: the internal key decides
        chosen[i] = ids[int(i)].as_py() <= cut_id
    return chosen


def output_tables(table: pa.Table, seed: int, cutoff: Cutoff) -> tuple[pa.Table, pa.Table]:
    """Kept rows -> (train rows, eval rows) in the canonical schema the train stage reads. The conversation
    and split key come from the read pass (``chat``, ``split_key``), so this is Arrow work only; a table a
    phase wrote without them gets them here."""
    keys = table.column(SPLIT_KEY).to_numpy(zero_copy_only=False) if SPLIT_KEY in table.column_names \
        else split_keys(table, seed)
    chat = table.column(CHAT) if CHAT in table.column_names else \
        pa.array([json.loads(m) for m in table.column("messages").to_pylist()], MESSAGES_TYPE)
    rows = pa.table({"id": table.column("id"), "user_id": table.column("user_id"), "source": table.column("source"),
                     "messages": chat}, schema=OUTPUT_SCHEMA)
    in_eval = pa.array(is_eval(keys, table.column("id"), cutoff))
    return rows.filter(pc.invert(in_eval)), rows.filter(in_eval)


def digest_hash(digests: pa.Array) -> str:
    """The hash that identifies a split: sha256 over the row count and the sum of the rows' digests
    (``row_digest``) modulo 2^256, which no row order or file layout changes. Summed as eight 32-bit limbs
    in numpy (a limb sum of n rows stays below n * 2^32)."""
    digests = digests.cast(DIGEST_TYPE)
    count = len(digests)
    raw = np.frombuffer(digests.buffers()[1], dtype=np.uint8)[digests.offset * 32:(digests.offset + count) * 32]
    limbs = raw.reshape(count, 8, 4).view(">u4").reshape(count, 8).astype(np.uint64).sum(axis=0)
    total = sum(int(limb) << (32 * (7 - place)) for place, limb in enumerate(limbs.tolist()))
    return hashlib.sha256(f"{count}:".encode() + (total % DIGEST_MODULUS).to_bytes(32, "big")).hexdigest()


def split_hash(split_files: list[str]) -> str:
    """``digest_hash`` of the rows of written split files (what the manifest records, recomputed)."""
    import pyarrow.parquet as pq

    digests: list[bytes] = []
    for path in split_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "messages"], batch_size=65_536):
            digests.extend(row_digest(row_id, messages) for row_id, messages in
                           zip(batch.column("id").to_pylist(), batch.column("messages").to_pylist(), strict=True))
    return digest_hash(pa.array(digests, DIGEST_TYPE))
