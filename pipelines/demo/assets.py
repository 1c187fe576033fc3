"""Demo assets: the sample instruction data and the offline tiny base model.

    raylora demo-assets configs/demo.yaml

``pipelines.models.resolve_base_model`` asks this module for the tiny model when ``model.base: tiny``.
"""

from __future__ import annotations

import glob
from pathlib import Path

from adapters import tiny
from pipelines.config import TINY_MODEL, RayloraConfig
from pipelines.demo import sample_data, tasks

TINY_MODEL_SEED = 0  # the seed of the tiny model's pretraining corpus and build, whatever the config's seed
PRETRAINING_EVAL_SET = "pretraining.jsonl"  # beside the sample data: the forgetting study's eval set
NARROW_TASK_SET = "narrow.jsonl"  # beside the sample data: the rank study's one-task arm


def tiny_model_path(seed: int = TINY_MODEL_SEED) -> Path:
    """The tiny base model, built (about a minute on 2 cores) the first time it is asked for."""
    return tiny.build_tiny_model(tasks.skill_corpus(seed), seed=seed)


def sample_data_dir(cfg: RayloraConfig) -> Path:
    return cfg.path("data")


def build_demo_assets(cfg: RayloraConfig, n_clean: int = 2000, n_eval: int = 200) -> dict[str, Path]:
    """Write the sample data under ``<workdir>/data``, with an eval set of the tiny model's pretraining text
    (``pretraining.jsonl``) and a one-task training set (``narrow.jsonl``), and make sure the tiny model exists."""
    paths = sample_data.generate(sample_data_dir(cfg), seed=cfg.seed, n_clean=n_clean, n_eval=n_eval)
    paths["pretraining"] = tasks.write_pretraining_eval_set(sample_data_dir(cfg) / PRETRAINING_EVAL_SET,
                                                                  seed=TINY_MODEL_SEED)
    paths["narrow"] = sample_data.write_narrow_task_set(sample_data_dir(cfg) / NARROW_TASK_SET, seed=cfg.seed)
    paths["tiny_model"] = tiny_model_path()
    return paths


def needs_demo_assets(cfg: RayloraConfig) -> bool:
    """True for a config that runs on the demo's own world: the tiny base with a data file not written yet.

    ``raylora run`` builds the assets only then; a real model's recipe never triggers a tiny-model build.
    """
    if cfg.model.base != TINY_MODEL:
        return False
    wanted = [source.path for source in cfg.data.sources] + list(cfg.data.eval_sets)
    return any("://" not in path and not glob.glob(path) for path in wanted)
