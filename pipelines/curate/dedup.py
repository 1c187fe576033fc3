"""Deduplication on Ray Data: exact duplicates and MinHash/LSH near duplicates, verified.

    raylora curate configs/demo.yaml curate.near_dedup_threshold=0.8

Dedup runs across the whole dataset without gathering it into one process:
  1. every kept row emits its bucket keys: one exact key (hash of the normalised conversation) and,
     for near dedup, one key per LSH band of its MinHash signature over word shingles;
  2. a sort on the key pairs every row with the first row of each bucket it shares: the smallest user id,
     then the smallest internal key (rows without a user id first);
  3. a shuffle on the keeper attaches the keeper's text to each pair, and a shuffle on the row id
     brings each row together with its candidate pairs, which are verified (equal normalised text, or
     exact shingle Jaccard >= threshold): a verified row is a duplicate of its smallest verified keeper
     (``exact_duplicate`` when the text is equal, else ``near_duplicate``).
Rows are told apart by their internal key (``id``: source file and position), never by the user's id, so
two identical rows always meet, and rows that merely share a user id never do. Each cluster keeps its
first row by (user id, key), deterministically. In a chain a~b~c where a and c are not close, c stays when
no bucket pairs it with b as the first member; such chains are rare at threshold 0.7.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from pipelines.curate.filters import words
from pipelines.curate.reasons import EXACT_DUPLICATE, NEAR_DUPLICATE

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
KEY_SCHEMA = pa.schema([("key", pa.int64()), ("id", pa.string()), ("rank", pa.string()), ("kind", pa.string())])
EXACT, NEAR = "exact", "near"  # which kind of bucket key paired two rows
DUPLICATE_REASON = {EXACT: EXACT_DUPLICATE, NEAR: NEAR_DUPLICATE}


def normalised_text(messages: Sequence[dict[str, str]]) -> str:
    """Role-tagged, lower-cased, whitespace-collapsed conversation: equal text means an exact duplicate."""
    return "\n".join(f"{m['role']}: {' '.join(m['content'].lower().split())}" for m in messages)


def exact_key(messages: Sequence[dict[str, str]]) -> int:
    digest = hashlib.blake2b(normalised_text(messages).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def shingles(messages: Sequence[dict[str, str]], k: int) -> list[str]:
    """Word k-shingles of the whole conversation; a text shorter than k words is one shingle."""
    tokens = words(" ".join(m["content"] for m in messages))
    if len(tokens) <= k:
        return [" ".join(tokens)]
    return [" ".join(tokens[i:i + k]) for i in range(len(tokens) - k + 1)]


@dataclass(frozen=True)
class MinHasher:
    """MinHash over 32-bit shingle hashes with datasketch's permutation scheme (a*h + b mod 2^61-1)."""

    num_perm: int = 128
    seed: int = 1

    @property
    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.RandomState(self.seed)
        a = rng.randint(1, MERSENNE_PRIME, size=self.num_perm, dtype=np.uint64)
        b = rng.randint(0, MERSENNE_PRIME, size=self.num_perm, dtype=np.uint64)
        return a, b

    def signatures(self, shingle_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(rows, num_perm) uint64 signatures, computed for a whole batch in a few numpy passes."""
        a, b = self.permutations
        lengths = np.array([len(s) for s in shingle_lists])
        hashes = np.fromiter((zlib.crc32(s.encode("utf-8", "surrogatepass")) for group in shingle_lists
                              for s in group), dtype=np.uint64, count=int(lengths.sum()))
        permuted = ((hashes[:, None] * a + b) % MERSENNE_PRIME) & MAX_HASH
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return np.minimum.reduceat(permuted, starts, axis=0)


@lru_cache(maxsize=16)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that minimise 0.05 x false positives + 0.95 x false negatives at ``threshold``:
    datasketch's MinHashLSH optimisation, weighted to miss few true pairs.

    Candidates are verified afterwards, so a false positive only costs a comparison while a false
    negative is a duplicate left in the data: weigh misses 19:1 (at 0.7: 21 bands of 6 rows, a pair
    at Jaccard 0.75 becomes a candidate with probability 0.98).
    """
    from scipy.integrate import quad

    def weighted_error(bands: int, rows: int) -> float:
        def candidate(s: float) -> float:  # the chance that a pair of Jaccard s shares a bucket
            return 1 - (1 - s ** float(rows)) ** float(bands)

        false_positives = quad(candidate, 0.0, threshold)[0]
        false_negatives = quad(lambda s: 1 - candidate(s), threshold, 1.0)[0]
        return false_positives * 0.05 + false_negatives * 0.95

    # the first of equal minima, as datasketch picks it
    return min(((bands, rows) for bands in range(1, num_perm + 1) for rows in range(1, num_perm // bands + 1)),
               key=lambda shape: weighted_error(*shape))


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(rows, bands) int64 bucket keys: a wrapping polynomial hash of each band, salted by band index."""
    salt = np.random.RandomState(7).randint(1, np.iinfo(np.int64).max, size=(bands, rows), dtype=np.int64)
    keys = np.empty((signatures.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            part = signatures[:, band * rows:(band + 1) * rows]
            keys[:, band] = (part * salt[band].astype(np.uint64)).sum(axis=1) + np.uint64(band + 1) * np.uint64(
                0x9E3779B97F4A7C15)
    return keys.view(np.int64)


@dataclass(frozen=True)
class DedupSpec:
    """What dedup needs, as plain data for Ray tasks."""

    exact: bool = True
    threshold: float | None = 0.8
    num_perm: int = 128
    shingle_words: int = 3

    @property
    def near(self) -> bool:
        return self.threshold is not None


def dedup_spec(curate: Any) -> DedupSpec | None:
    """The dedup the ``curate`` config section asks for; None when exact and near dedup are both off."""
    spec = DedupSpec(exact=curate.exact_dedup, threshold=curate.near_dedup_threshold,
                     num_perm=curate.minhash_num_perm, shingle_words=curate.shingle_words)
    return spec if spec.exact or spec.near else None


KEYS_TYPE = pa.list_(pa.int64())


def dedup_keys(conversations: Sequence[Sequence[dict[str, str]] | None], spec: DedupSpec) -> pa.Array:
    """Each row's bucket keys as list<int64>: its exact key first (when ``spec.exact``), then one key per
    LSH band of its MinHash signature over word shingles. ``None`` (a row already dropped) gets no keys.

    Computed in the read+filter pass, where the conversation is already parsed, so dedup never
    parses the rows again.
    """
    live = [i for i, m in enumerate(conversations) if m is not None]
    per_row = np.zeros((len(live), 0), dtype=np.int64)
    if spec.exact:
        exact = np.array([exact_key(conversations[i]) for i in live], dtype=np.int64)
        per_row = np.concatenate([per_row, exact[:, None]], axis=1)
    if spec.near and live:
        bands, rows = lsh_bands(spec.threshold, spec.num_perm)
        signatures = MinHasher(spec.num_perm).signatures([shingles(conversations[i], spec.shingle_words)
                                                          for i in live])
        per_row = np.concatenate([per_row, band_keys(signatures, bands, rows)], axis=1)
    width = per_row.shape[1]
    lengths = np.zeros(len(conversations), dtype=np.int32)
    lengths[live] = width
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(per_row.reshape(-1), pa.int64()))


def keeper_rank(user_ids: Sequence[str | None], ids: Sequence[str]) -> list[str]:
    """The order in which rows of a cluster are kept: by user id, then internal key (which has no NUL)."""
    return [f"{user_id or ''}\0{row_id}" for user_id, row_id in zip(user_ids, ids, strict=True)]


def explode_keys(batch: pa.Table, exact: bool) -> pa.Table:
    """Ray UDF: (id, user_id, dedup_keys) rows -> one (key, id, rank, kind) row per key; the first key is
    exact when ``exact``."""
    keys = batch.column("dedup_keys").combine_chunks()
    lengths = pa.compute.list_value_length(keys).fill_null(0).to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(batch.num_rows), lengths)
    position = np.arange(len(parents)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kind = np.where((position == 0) & exact, EXACT, NEAR) if len(parents) else np.array([], dtype=object)
    rank = pa.array(keeper_rank(batch.column("user_id").to_pylist(), batch.column("id").to_pylist()), pa.string())
    take = pa.array(parents, pa.int64())
    return pa.table({"key": keys.flatten(), "id": batch.column("id").take(take), "rank": rank.take(take),
                     "kind": pa.array(kind, pa.string())}, schema=KEY_SCHEMA)


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    left, right = set(a), set(b)
    return len(left & right) / len(left | right) if left or right else 1.0


def is_duplicate(kind: str, row: Sequence[dict[str, str]], keeper: Sequence[dict[str, str]],
                 spec: DedupSpec) -> bool:
    """Verify an LSH candidate: equal normalised text, or exact shingle Jaccard >= threshold.

    LSH is tuned to miss few pairs, so it also proposes template siblings ("What is 3 + 4?" /
    "What is 3 + 5?"); the exact Jaccard of the two shingle sets decides.
    """
    if kind == EXACT:
        return normalised_text(row) == normalised_text(keeper)
    return jaccard(shingles(row, spec.shingle_words), shingles(keeper, spec.shingle_words)) >= spec.threshold


# The three shuffles below are co-groups: datasets with one schema are unioned, sorted on one column
# (a range partition: all rows with equal values land in one block, which Ray's own map_groups relies
# on), and each block is processed whole with vectorised Arrow group-bys instead of one Python call per
# group. Sorting runs as plain Ray tasks; hash shuffles start actor pools, slow to start on a small cluster.
PAIR_SCHEMA = pa.schema([("id", pa.string()), ("keeper", pa.string()), ("kind", pa.string())])
KEEPER_SCHEMA = pa.schema([("on", pa.string()), ("id", pa.string()), ("kind", pa.string()),
                           ("messages", pa.string())])
MARK_SCHEMA = pa.schema([("on", pa.string()), ("user_id", pa.string()), ("source", pa.string()),
                         ("messages", pa.string()),
                         ("reason", pa.string()), ("detail", pa.string()), ("keeper", pa.string()),
                         ("kind", pa.string()), ("keeper_messages", pa.string())])


def bucket_pairs(block: pa.Table) -> pa.Table:
    """Keys of one partition -> (id, keeper, kind) for every row sharing a bucket with a row of smaller rank."""
    if block.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    stats = block.group_by("key").aggregate([("id", "count"), ("rank", "min")])
    shared = stats.filter(pa.compute.greater(stats.column("id_count"), 1))
    if shared.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    # each shared bucket's first row by rank is its keeper (a rank names one row)
    keepers = block.join(shared.select(["key", "rank_min"]), ["key", "rank"], ["key", "rank_min"],
                         join_type="inner").select(["key", "id"]).rename_columns(["key", "keeper"])
    joined = block.join(keepers, "key", join_type="inner")
    pairs = joined.filter(pa.compute.not_equal(joined.column("id"), joined.column("keeper")))
    return pa.table({"id": pairs.column("id"), "keeper": pairs.column("keeper"), "kind": pairs.column("kind")},
                    schema=PAIR_SCHEMA)


def attach_keeper_text(block: pa.Table) -> pa.Table:
    """One partition of (keeper texts + pairs) on keeper id -> pairs carrying the keeper's messages."""
    is_text = pa.compute.is_null(block.column("id"))
    texts = block.filter(is_text).select(["on", "messages"])
    pairs = block.filter(pa.compute.invert(is_text)).select(["on", "id", "kind"])
    joined = pairs.join(texts, "on", join_type="inner")
    return joined.select(["on", "id", "kind", "messages"]).cast(KEEPER_SCHEMA)


def mark_block(block: pa.Table, spec: DedupSpec) -> pa.Table:
    """One partition of (rows + their verified-candidate pairs) on id -> the rows with duplicate reasons set."""
    is_row = pa.compute.is_null(block.column("keeper"))
    rows = block.filter(is_row)
    candidates: dict[str, set[tuple[str, str, str]]] = {}
    for row_id, keeper, kind, keeper_messages in zip(
            *(block.filter(pa.compute.invert(is_row)).column(c).to_pylist()
              for c in ("on", "keeper", "kind", "keeper_messages")), strict=True):
        candidates.setdefault(row_id, set()).add((kind, keeper, keeper_messages))  # one pair per band: verify once
    reasons, details = rows.column("reason").to_pylist(), rows.column("detail").to_pylist()
    for i, (row_id, messages) in enumerate(zip(rows.column("on").to_pylist(), rows.column("messages").to_pylist(),
                                               strict=True)):
        if row_id not in candidates:
            continue
        parsed = json.loads(messages)
        # the exact label wins ("exact" < "near"), then the smallest keeper
        for kind, keeper, keeper_messages in sorted(candidates[row_id]):
            if is_duplicate(kind, parsed, json.loads(keeper_messages), spec):
                reasons[i], details[i] = DUPLICATE_REASON[kind], f"duplicate of {keeper}"
                break
    return pa.table({"id": rows.column("on"), "user_id": rows.column("user_id"), "source": rows.column("source"),
                     "messages": rows.column("messages"), "reason": pa.array(reasons, pa.string()),
                     "detail": pa.array(details, pa.string())})


def _as(batch: pa.Table, schema: pa.Schema, columns: dict[str, str]) -> pa.Table:
    """Rename ``columns`` (schema name -> batch name) and fill the rest of ``schema`` with nulls."""
    return pa.table({name: batch.column(columns[name]) if name in columns else pa.nulls(batch.num_rows, kind)
                     for name, kind in zip(schema.names, schema.types, strict=True)}, schema=schema)


def mark_duplicates(rows: Any, spec: DedupSpec) -> Any:
    """Kept rows (pipeline schema plus ``dedup_keys``) -> the same rows, duplicates marked
    ``exact_duplicate`` / ``near_duplicate``.

    Three shuffles on Ray Data in one execution: keys by bucket, pairs with keeper texts by keeper,
    rows with their pairs by id.
    """
    pairs = (rows.select_columns(["id", "user_id", "dedup_keys"])
             .map_batches(explode_keys, batch_format="pyarrow", fn_kwargs={"exact": spec.exact})
             .sort("key")
             .map_batches(bucket_pairs, batch_size=None, batch_format="pyarrow"))
    keeper_texts = rows.map_batches(_as, batch_format="pyarrow", fn_kwargs={
        "schema": KEEPER_SCHEMA, "columns": {"on": "id", "messages": "messages"}})
    pairs_by_keeper = pairs.map_batches(_as, batch_format="pyarrow", fn_kwargs={
        "schema": KEEPER_SCHEMA, "columns": {"on": "keeper", "id": "id", "kind": "kind"}})
    with_keeper = (keeper_texts.union(pairs_by_keeper).sort("on")
                   .map_batches(attach_keeper_text, batch_size=None, batch_format="pyarrow")
                   .map_batches(_as, batch_format="pyarrow", fn_kwargs={
                       "schema": MARK_SCHEMA,
                       "columns": {"on": "id", "keeper": "on", "kind": "kind", "keeper_messages": "messages"}}))
    own_rows = rows.map_batches(_as, batch_format="pyarrow", fn_kwargs={
        "schema": MARK_SCHEMA, "columns": {"on": "id", "user_id": "user_id", "source": "source",
                                           "messages": "messages", "reason": "reason", "detail": "detail"}})
    return (own_rows.union(with_keeper).sort("on")
            .map_batches(mark_block, batch_size=None, batch_format="pyarrow", fn_kwargs={"spec": spec}))
