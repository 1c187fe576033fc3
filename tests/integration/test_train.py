"""Distributed adapter training on real Ray Train + DeepSpeed (CPU, gloo), fed by Ray Data.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/integration/test_train.py -q
"""

from __future__ import annotations

import pytest

from pipelines.config import validate_config


def make_cfg(demo_config_dict, **sections):
    raw = dict(demo_config_dict)
    raw["train"] = {**raw["train"], "max_steps": 6, "micro_batch_size": 4, "lr": 2e-3, "warmup_ratio": 0.0,
                    "eval_every": 3, "checkpoint_every": 3, "log_every": 1, "eval_generate_limit": 8,
                    "eval_max_new_tokens": 4, **sections.pop("train", {})}
    raw["model"] = {**raw["model"], "max_seq_len": 128}
    raw["cluster"] = {**raw["cluster"], "num_workers": 2, "cpus_per_worker": 0.5, **sections.pop("cluster", {})}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_config(raw)


def test_smoke(ray_local, demo_config_dict, curated_manifest):
    from pipelines.train import train

    cfg = make_cfg(demo_config_dict)
    result = train(cfg, curated_manifest)
    print(result)
