"""Shared fixtures: one local Ray cluster per test session, the tiny model, the sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """gpu tests skip where CUDA is not there."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole session (2 CPUs, no dashboard); tests share it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The offline tiny base model (built once, cached under RAYLORA_CACHE)."""
    from pipelines.assets import tiny_model_path as build

    return build()


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> dict[str, Path]:
    """The default sample data set, generated once for the session."""
    from pipelines import sample_data

    return sample_data.generate(tmp_path_factory.mktemp("sample-data"), seed=0)


@pytest.fixture
def demo_config_dict(sample_data, tmp_path) -> dict:
    """configs/demo.yaml pointed at the session's sample data and a per-test workdir."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["workdir"] = str(tmp_path / "work")
    raw["data"]["sources"] = [
        {"path": str(sample_data[fmt]), "format": fmt} for fmt in ("alpaca", "sharegpt", "openai")
    ]
    raw["data"]["eval_sets"] = [str(sample_data["eval"])]
    return raw
