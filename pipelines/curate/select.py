"""Selection of the deduplicated, filtered rows: per-source caps and weights, the quality top-k and an
embedding-diverse subset (LIMA-style).

    raylora curate configs/demo.yaml curate.quality_top_k=1000 curate.diversity_select=500
    raylora curate my.yaml        # data.sources: [{path: a.jsonl, max_rows: 5000, weight: 3}, {path: b.jsonl, weight: 1}]

``source_quotas`` and ``over_quota`` decide, on the driver from each kept row's id and source alone, which
rows a source's ``max_rows`` (``over_source_cap``) and the sources' ``weight`` shares
(``over_source_weight``) leave out, by a seeded hash of the row's key so the pick is fixed and spread over
the source. Then, on Ray Data, each hands back (chosen, the rest labelled with its drop reason):
``quality_split`` keeps the rows with the highest ``quality_score`` (``below_top_k`` for the others);
``diversity_split`` keeps the rows farthest apart by sentence embedding (``not_diverse`` for the others).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.curate.embeddings import embedder
from pipelines.curate.filters import Messages, answers, conversation_text, words
from pipelines.curate.formats import ROW_SCHEMA
from pipelines.curate.reasons import BELOW_TOP_K, NOT_DIVERSE, OVER_SOURCE_CAP, OVER_SOURCE_WEIGHT


def with_reason(batch: pa.Table, reason: str) -> pa.Table:
    """Ray UDF: the rows in the pipeline schema, each dropped for ``reason``."""
    rows = batch.select(list(ROW_SCHEMA.names))
    return rows.set_column(rows.schema.get_field_index("reason"), "reason",
                           pa.array([reason] * len(rows), pa.string()))


# --- per-source caps and weights ---------------------------------------------------------------------

def source_quotas(available: Mapping[str, int], caps: Mapping[str, int | None],
                  weights: Mapping[str, float] | None) -> tuple[dict[str, int], dict[str, int]]:
    """(rows each source keeps under its cap, rows it keeps under the weights too) from the rows it has left.

    Weights only ever drop rows, never repeat one: the mix is as large as the source shortest of its share
    allows (total = min over sources of capped rows / share), and each source keeps its share of that.
    """
    capped = {source: min(n, caps.get(source) or n) for source, n in available.items()}
    if not weights:
        return capped, dict(capped)
    total_weight = sum(weights[source] for source in capped)
    share = {source: weights[source] / total_weight for source in capped}
    mix = min(capped[source] / share[source] for source in capped)
    weighted = {source: min(capped[source], math.floor(mix * share[source] + 1e-9)) for source in capped}
    return capped, weighted


def pick_order(ids: Sequence[str], seed: int) -> list[int]:
    """Positions of ``ids`` in a fixed pseudo-random order (seeded hash of each key): the first n of a source
    are the n it keeps, spread over the whole source rather than its first lines."""
    return sorted(range(len(ids)), key=lambda i: hashlib.blake2b(f"{seed}:{ids[i]}".encode(), digest_size=8).digest())


def over_quota(ids: Sequence[str], sources: Sequence[str], caps: Mapping[str, int | None],
               weights: Mapping[str, float] | None, seed: int) -> dict[str, list[str]]:
    """The ids that per-source control drops, by reason: beyond a source's ``max_rows`` (``over_source_cap``),
    then beyond its weighted share of the mix (``over_source_weight``)."""
    by_source: dict[str, list[str]] = {}
    for row_id, source in zip(ids, sources, strict=True):
        by_source.setdefault(source, []).append(row_id)
    capped, weighted = source_quotas({source: len(rows) for source, rows in by_source.items()}, caps, weights)
    over: dict[str, list[str]] = {OVER_SOURCE_CAP: [], OVER_SOURCE_WEIGHT: []}
    for source, rows in sorted(by_source.items()):
        ordered = [rows[i] for i in pick_order(rows, seed)]
        over[OVER_SOURCE_WEIGHT].extend(ordered[weighted[source]:capped[source]])
        over[OVER_SOURCE_CAP].extend(ordered[capped[source]:])
    return over


# --- quality top-k ----------------------------------------------------------------------------------

def quality_score(messages: Messages) -> float:
    """LIMA-style preference for substance: longer answers, more exchanges, varied wording."""
    answer_words = [w for a in answers(messages) for w in words(a)]
    all_words = words(conversation_text(messages))
    variety = len(set(all_words)) / len(all_words) if all_words else 0.0
    exchanges = sum(m["role"] == "assistant" for m in messages)
    return math.log1p(len(answer_words)) + 0.5 * (exchanges - 1) + variety


def add_quality(batch: pa.Table) -> pa.Table:
    """Ray UDF: the quality score of each row, for top-k selection."""
    scores = [quality_score(json.loads(m)) for m in batch.column("messages").to_pylist()]
    return batch.append_column("quality", pa.array(scores, pa.float64()))


def quality_split(rows: Any, k: int) -> tuple[Any, Any | None]:
    """(the ``k`` rows of highest quality score, ties broken by id; the rest labelled ``below_top_k``, or
    None when there are no more than ``k`` rows)."""
    ranked = rows.map_batches(add_quality, batch_format="pyarrow").sort(
        ["quality", "id"], descending=[True, False]).materialize()
    if ranked.count() <= k:
        return rows, None
    top, below = ranked.split_at_indices([k])
    return top, below.map_batches(with_reason, batch_format="pyarrow", fn_kwargs={"reason": BELOW_TOP_K})


# --- diversity selection with sentence embeddings ---------------------------------------------------

def embed_batch(batch: pa.Table, model_path: str) -> pa.Table:
    """Ray UDF: rows -> (id, unit-length embedding of the conversation text)."""
    texts = [" ".join(m["content"] for m in json.loads(raw)) for raw in batch.column("messages").to_pylist()]
    vectors = embedder(model_path).encode(texts, batch_size=64, normalize_embeddings=True,
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
    return batch.filter(member if keep else pc.invert(member))


def diversity_split(rows: Any, k: int, model_path: str) -> tuple[Any, Any]:
    """(the ``k`` most mutually different rows by embedding, the rest labelled ``not_diverse``).

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
    rest = rows.map_batches(keep_ids_batch, batch_format="pyarrow", fn_kwargs={"ids": chosen, "keep": False})
    return (rows.map_batches(keep_ids_batch, batch_format="pyarrow", fn_kwargs={"ids": chosen, "keep": True}),
            rest.map_batches(with_reason, batch_format="pyarrow", fn_kwargs={"reason": NOT_DIVERSE}))
