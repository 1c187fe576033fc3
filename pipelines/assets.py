"""Demo assets: the sample instruction data and the offline tiny base model.

    raylora demo-assets configs/demo.yaml

Stages call ``resolve_base_model`` so that ``model.base: tiny`` becomes a real local path
(built on first use, cached afterwards) and any other value passes through to Hugging Face.
"""

from __future__ import annotations

from pathlib import Path

from adapters import tiny
from pipelines import sample_data
from pipelines.config import TINY_MODEL, RayloraConfig


def tiny_model_path(seed: int = 0) -> Path:
    """The tiny base model, built (about a minute on 2 cores) the first time it is asked for."""
    return tiny.build_tiny_model(sample_data.skill_corpus(seed), seed=seed)


def resolve_base_model(base: str) -> str:
    """``tiny`` -> the local tiny model's path; a hub id or local path passes through unchanged."""
    return str(tiny_model_path()) if base == TINY_MODEL else base


def sample_data_dir(cfg: RayloraConfig) -> Path:
    return cfg.path("data")


def build_demo_assets(cfg: RayloraConfig, n_clean: int = 2000, n_eval: int = 200) -> dict[str, Path]:
    """Write the sample data under ``<workdir>/data`` and make sure the tiny model exists."""
    paths = sample_data.generate(sample_data_dir(cfg), seed=cfg.seed, n_clean=n_clean, n_eval=n_eval)
    paths["tiny_model"] = tiny_model_path()
    return paths
