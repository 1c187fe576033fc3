"""Which base model a config names: the one place that turns ``model.base`` into something loadable.

``model.base: tiny`` names the offline tiny Llama that the demo builds (about a minute on 2 cores, then
cached); any other value is a local directory or a Hugging Face id and passes through unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipelines.config import TINY_MODEL, ModelConfig
from pipelines.errors import ConfigError


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


def model_config_file(model: ModelConfig, other_way: str = "") -> str:
    """Where the base model's config.json is read, without its weights: ``model.base`` (a directory, or the hub and its
    cache), else ``model.config_file`` when the hub cannot give it (offline, or a gated model without a token).
    ``other_way`` ends the errors with what else the caller takes (``raylora plan``: --model-config)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    also = f", {other_way}" if other_way else ""
    source = resolve_base_model(model.base)
    if Path(source).is_dir():
        if not (Path(source) / "config.json").is_file():
            raise ConfigError(f"model.base={model.base} is a directory without a model's config.json: point it at "
                              f"a directory that save_pretrained wrote{also}")
        return source
    try:
        return hf_hub_download(source, "config.json", revision=model.revision)
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError) as err:
        if model.config_file is None:
            raise ConfigError(
                f"model.base={model.base} is not a local model directory, and the Hugging Face hub could not give "
                f"its config.json ({type(err).__name__}): set model.config_file to it (configs/models/ holds "
                f"some){also}") from err
        if not Path(model.config_file).is_file():
            raise ConfigError(f"model.config_file={model.config_file} does not exist (paths are relative to the "
                              "working directory): point it at the model's config.json") from err
        return model.config_file
