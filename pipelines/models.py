"""Which base model a config names: the one place that turns ``model.base`` into something loadable.

``model.base: tiny`` names the offline tiny Llama that the demo builds (about a minute on 2 cores, then
cached); any other value is a local directory or a Hugging Face id and passes through unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from pipelines.config import TINY_MODEL


@lru_cache(maxsize=8)
def resolve_base_model(base: str) -> str:
    """``tiny`` -> the local tiny model's path; a hub id or local path passes through unchanged.

    Cached per process: the tiny model's cache key is a digest of its pretraining corpus, which costs a
    corpus generation to compute, so a run resolves it once.
    """
    if base != TINY_MODEL:
        return base
    # the tiny model is built from the demo's corpus: imported here, not at the top, so the ground
    # (config, errors, artifacts, models) never pulls in the demo for a real model
    from pipelines.demo.assets import tiny_model_path

    return str(tiny_model_path())
