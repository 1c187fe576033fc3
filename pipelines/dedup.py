"""Deduplication (exact + MinHash/LSH near duplicates) on Ray Data, and decontamination against eval sets.

    raylora curate configs/demo.yaml curate.near_dedup_threshold=0.8

Dedup runs across the whole dataset without gathering it into one process:
  1. every kept row emits its bucket keys: one exact key (hash of the normalised conversation) and,
     for near dedup, one key per LSH band of its MinHash signature over word shingles;
  2. a distributed group-by counts each key and finds its smallest id; keys seen once are done;
  3. a distributed join of the rows' keys with the shared buckets pairs every row with the smallest id
     of each bucket it shares; a join with the texts verifies each pair (equal normalised text, or exact
     shingle Jaccard >= threshold), and a verified row is a duplicate of its smallest verified keeper
     (``exact_duplicate`` when the text is equal, else ``near_duplicate``).
So each cluster keeps its smallest id, deterministically. A chain a~b~c where a and c are not close
keeps only a; two rows that both share a bucket only with a third, larger row are both kept.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.filters import words

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


def row_keys(ids: Sequence[str], conversations: Sequence[Sequence[dict[str, str]]], spec: DedupSpec) -> pa.Table:
    """The bucket keys of a batch of rows: (key, id, kind) with kind exact or near."""
    key_col: list[np.ndarray] = []
    id_col: list[Iterable[str]] = []
    kind_col: list[Iterable[str]] = []
    if spec.exact:
        key_col.append(np.array([exact_key(m) for m in conversations], dtype=np.int64))
        id_col.append(ids)
        kind_col.append([EXACT] * len(ids))
    if spec.near and len(ids):
        bands, rows = lsh_bands(spec.threshold, spec.num_perm)
        signatures = MinHasher(spec.num_perm).signatures([shingles(m, spec.shingle_words) for m in conversations])
        keys = band_keys(signatures, bands, rows)
        key_col.append(keys.reshape(-1))
        id_col.append(np.repeat(np.asarray(ids, dtype=object), bands))
        kind_col.append([NEAR] * (len(ids) * bands))
    if not key_col:
        return KEY_SCHEMA.empty_table()
    return pa.table({"key": np.concatenate(key_col), "id": [i for part in id_col for i in part],
                     "kind": [k for part in kind_col for k in part]}, schema=KEY_SCHEMA)


def keys_batch(batch: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """Ray ``map_batches`` UDF: kept rows -> their bucket keys."""
    ids = batch.column("id").to_pylist()
    conversations = [json.loads(m) for m in batch.column("messages").to_pylist()]
    return row_keys(ids, conversations, DedupSpec(**spec))


def verify_batch(batch: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """Ray UDF: keep the candidate pairs that really are duplicates (equal text, or shingle Jaccard >= threshold).

    LSH is tuned to miss few pairs, so it also proposes template siblings ("What is 3 + 4?" / "What is
    3 + 5?"); the exact Jaccard of the two shingle sets decides.
    """
    settings = DedupSpec(**spec)
    keep = []
    for kind, left, right in zip(batch.column("kind").to_pylist(), batch.column("messages").to_pylist(),
                                 batch.column("keeper_messages").to_pylist(), strict=True):
        a, b = json.loads(left), json.loads(right)
        if kind == EXACT:
            keep.append(normalised_text(a) == normalised_text(b))
        else:
            keep.append(jaccard(shingles(a, settings.shingle_words), shingles(b, settings.shingle_words))
                        >= settings.threshold)
    return batch.select(["id", "keeper", "kind"]).filter(pa.array(keep, pa.bool_()))


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    left, right = set(a), set(b)
    return len(left & right) / len(left | right) if left or right else 1.0


def find_duplicates(rows: Any, spec: DedupSpec, work_dir: Path, num_partitions: int) -> Any:
    """Kept rows (Ray Dataset with id, messages) -> Dataset of (id, dup_kind, dup_of), one row per duplicate.

    Every step is a Ray Data operator (map, hash group-by, hash join); the bucket keys and the
    candidate pairs are written under ``work_dir`` so that no step is computed twice.
    """
    import ray.data
    from ray.data.aggregate import Count, Min

    keys_path, pairs_path = str(work_dir / "dedup_keys"), str(work_dir / "dedup_pairs")
    rows.map_batches(keys_batch, batch_format="pyarrow", fn_kwargs={"spec": spec.__dict__},
                     batch_size=2000).write_parquet(keys_path, min_rows_per_file=200_000)
    keys = ray.data.read_parquet(keys_path)
    shared = (keys.groupby("key", num_partitions=num_partitions)
              .aggregate(Count(alias_name="members"), Min("id", alias_name="keeper"))
              .filter(expr="members > 1").select_columns(["key", "keeper"]))
    (keys.join(shared, join_type="inner", num_partitions=num_partitions, on=("key",))
     .filter(expr="id != keeper").select_columns(["id", "keeper", "kind"])
     .write_parquet(pairs_path, min_rows_per_file=200_000))
    texts = rows.select_columns(["id", "messages"])
    keeper_texts = texts.rename_columns({"id": "keeper", "messages": "keeper_messages"})
    verified = (ray.data.read_parquet(pairs_path)
                .join(texts, join_type="inner", num_partitions=num_partitions, on=("id",))
                .join(keeper_texts, join_type="inner", num_partitions=num_partitions, on=("keeper",))
                .map_batches(verify_batch, batch_format="pyarrow", fn_kwargs={"spec": spec.__dict__}))
    # a row in several shared buckets: the exact label wins ("exact" < "near"), then the smallest keeper
    return verified.groupby("id", num_partitions=num_partitions).aggregate(
        Min("kind", alias_name="dup_kind"), Min("keeper", alias_name="dup_of"))


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

    from pipelines.formats import MalformedRecord, parse_line, to_messages

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
