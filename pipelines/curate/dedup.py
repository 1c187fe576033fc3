"""Deduplication: exact duplicates and MinHash/LSH near duplicates, verified, in transitive clusters.

    raylora curate configs/demo.yaml curate.near_dedup_threshold=0.8

Two steps, so that no full row is ever sorted or shuffled:
  1. in the read pass, where each conversation is parsed anyway, every row that passed the filters gets
     its bucket keys (``dedup_keys``): one exact key (a 64-bit hash of the normalised conversation) and,
     for near dedup, one key per LSH band of its MinHash signature over word shingles (rensa, in Rust);
  2. ``find_duplicates`` then works on those integer keys alone, with the rows numbered in keeper order
     (the smallest user id, then the smallest internal key; rows without a user id first): rows with
     equal exact keys collapse onto their first row; among those first rows, rows sharing an LSH bucket
     are candidate pairs (each with the bucket's first row and with the row before it in the bucket),
     verified by the exact Jaccard of their shingle sets (only these rows' texts are read); verified
     pairs join clusters (union-find), and each cluster keeps its first row. Clusters are transitive:
     a~b and b~c keep one of the three even when a and c are not close.
A duplicate is ``exact_duplicate`` when its exact key equals its keeper's, else ``near_duplicate``.
Rows are told apart by their internal key (``id``: source file and position), never by the user's id, so
two identical rows always meet, and rows that merely share a user id never do. Equal exact keys are taken
as equal text: two different texts share a 64-bit key with probability ~3e-8 in a million rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.curate.filters import words
from pipelines.curate.reasons import EXACT_DUPLICATE, NEAR_DUPLICATE

MINHASH_SEED = 1
KEYS_TYPE = pa.list_(pa.int64())


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


def minhash_signatures(shingle_lists: Sequence[Sequence[str]], num_perm: int) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures, a batch at a time in rensa (Rust)."""
    from itertools import chain

    from rensa import RMinHash

    if not shingle_lists:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = RMinHash.digest_matrix_from_token_sets(shingle_lists, num_perm=num_perm, seed=MINHASH_SEED)
    flat = np.fromiter(chain.from_iterable(matrix.to_rows()), dtype=np.uint32, count=len(shingle_lists) * num_perm)
    return flat.reshape(len(shingle_lists), num_perm)


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
            part = signatures[:, band * rows:(band + 1) * rows].astype(np.uint64)
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
        signatures = minhash_signatures([shingles(conversations[i], spec.shingle_words) for i in live],
                                        spec.num_perm)
        per_row = np.concatenate([per_row, band_keys(signatures, bands, rows)], axis=1)
    width = per_row.shape[1]
    lengths = np.zeros(len(conversations), dtype=np.int32)
    lengths[live] = width
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(per_row.reshape(-1), pa.int64()))


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    left, right = set(a), set(b)
    return len(left & right) / len(left | right) if left or right else 1.0


# --- finding duplicates over integer keys -------------------------------------------------------------

def keeper_order(user_ids: pa.Array | pa.ChunkedArray, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The positions of rows in the order a cluster keeps them: by user id (rows without one first), then by
    the unique internal key."""
    import pyarrow.compute as pc

    return pc.sort_indices(pa.table({"user": pc.fill_null(user_ids, ""), "id": ids}),
                           sort_keys=[("user", "ascending"), ("id", "ascending")]).to_numpy()


@dataclass(frozen=True)
class Duplicates:
    """The duplicates among rows numbered in keeper order: ``rows[i]`` is a duplicate of ``keepers[i]`` (the
    first row of its cluster), ``exact[i]`` when their exact keys are equal."""

    rows: np.ndarray
    keepers: np.ndarray
    exact: np.ndarray

    def reasons(self) -> list[str]:
        return [EXACT_DUPLICATE if same else NEAR_DUPLICATE for same in self.exact.tolist()]


def first_of_equal(values: np.ndarray) -> np.ndarray:
    """For each position, the smallest position holding the same value."""
    order = np.argsort(values, kind="stable")  # stable: equal values stay in position order
    ordered = values[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    first = np.empty(len(values), dtype=np.int64)
    first[order] = order[np.maximum.accumulate(np.where(starts, np.arange(len(values)), 0))]
    return first


def bucket_pairs(band: np.ndarray) -> np.ndarray:
    """(k, 2) pairs (row, earlier row) of positions that share a bucket key in ``band``: each row is paired
    with its bucket's first row and with the row before it in the bucket (both earlier in keeper order)."""
    order = np.argsort(band, kind="stable")
    ordered = band[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # sorted positions that continue a bucket
    if not len(same):
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    bucket_start = np.maximum.accumulate(np.where(starts, np.arange(len(band)), 0))
    to_first = np.stack([order[same], order[bucket_start[same]]], axis=1)
    to_previous = np.stack([order[same], order[same - 1]], axis=1)
    return np.concatenate([to_first, to_previous])


class Clusters:
    """Union-find whose root is always the smallest member (the keeper)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def root(self, row: int) -> int:
        path = []
        while self.parent.get(row, row) != row:
            path.append(row)
            row = self.parent[row]
        for member in path:
            self.parent[member] = row
        return row

    def join(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(keys: np.ndarray, spec: DedupSpec,
                    shingle_sets: Callable[[np.ndarray], dict[int, set[str]]]) -> Duplicates:
    """The duplicates among rows whose ``dedup_keys`` are the rows of ``keys`` (one row each, in keeper
    order). ``shingle_sets`` gives the shingle sets of the rows at some positions: only near-dedup candidates
    are asked for, to verify their pairs by exact Jaccard."""
    count = len(keys)
    if count == 0:
        return Duplicates(rows=np.zeros(0, np.int64), keepers=np.zeros(0, np.int64), exact=np.zeros(0, bool))
    positions = np.arange(count)
    first = first_of_equal(keys[:, 0]) if spec.exact else positions
    clusters = Clusters()
    if spec.near:
        leaders = np.flatnonzero(first == positions)  # exact duplicates go with their first row
        bands = keys[leaders, 1 if spec.exact else 0:]
        pairs = np.concatenate([bucket_pairs(bands[:, band]) for band in range(bands.shape[1])])
        pairs = np.unique(leaders[pairs], axis=0)  # sorted, each pair once however many bands proposed it
        if len(pairs):
            texts = shingle_sets(np.unique(pairs))
            for row, earlier in pairs.tolist():
                if jaccard(texts[row], texts[earlier]) >= spec.threshold:
                    clusters.join(row, earlier)
    keepers = np.array([clusters.root(leader) for leader in first.tolist()], dtype=np.int64)
    duplicate = np.flatnonzero(keepers != positions)
    exact = (keys[duplicate, 0] == keys[keepers[duplicate], 0]) if spec.exact else np.zeros(len(duplicate), bool)
    return Duplicates(rows=duplicate, keepers=keepers[duplicate], exact=exact)
