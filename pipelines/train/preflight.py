"""Checks before any worker starts: every problem the driver can see fails here, with exit 2 or 1 naming the fix,
never as a Ray traceback from inside a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.artifacts import DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError, StageError
from pipelines.train.engine import deepspeed_config


def check_inputs(cfg: RayloraConfig, manifest: DatasetManifest, base_path: str) -> None:
    """Fail before Ray starts workers: missing data files, a base model that cannot be had, a sequence
    length it cannot hold, adapter targets it does not have, a chat template that cannot mask, a bad
    DeepSpeed file. Each message names the fix."""
    missing = [p for p in [*manifest.train_paths, *manifest.eval_paths] if not Path(p).exists()]
    if missing:
        raise StageError(
            f"the dataset manifest points at {len(missing)} missing file(s), e.g. {missing[0]}: "
            "rerun `raylora curate CONFIG` to write them again"
        )
    if not manifest.train_paths:
        raise StageError("the dataset manifest has no train files: rerun `raylora curate CONFIG`")
    model_config = load_model_config(cfg, base_path)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and cfg.model.max_seq_len > limit:
        raise ConfigError(
            f"model.max_seq_len={cfg.model.max_seq_len} is longer than the model supports "
            f"({limit} positions): set model.max_seq_len={limit} or less"
        )
    check_target_modules(cfg, model_config)
    check_chat_template(cfg, manifest, base_path)
    if cfg.train.deepspeed.config_file:
        deepspeed_config(cfg)  # reads and checks the file


def load_model_config(cfg: RayloraConfig, base_path: str) -> Any:
    """The base model's Hugging Face config: from its directory, or the hub (or the hub's cache)."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_path, revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except OSError as err:
        if Path(base_path).is_dir():
            raise ConfigError(f"model.base={base_path} is a directory without a model's config.json: point it at "
                              "a directory that save_pretrained wrote") from err
        if isinstance(err.__cause__, LocalEntryNotFoundError):
            raise ConfigError(
                f"model.base={cfg.model.base} is not a local model directory, and the Hugging Face hub could not "
                "be reached to fetch it (offline, and not in the hub cache): point model.base at a local "
                f"directory holding the model, or download it first (`hf download {cfg.model.base}`)") from err
        raise ConfigError(f"model.base={cfg.model.base} is neither a local model directory nor a model the Hugging "
                          f"Face hub gives ({err}): fix the path or the hub id") from err


def check_target_modules(cfg: RayloraConfig, model_config: Any) -> None:
    """adapter.target_modules must name modules of this model: built on the meta device from its config
    (no weights, no memory), as the memory planner does."""
    import torch
    from transformers import AutoModelForCausalLM

    from adapters.build import check_targets

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=cfg.model.trust_remote_code)
    check_targets(model, cfg.adapter)


def check_chat_template(cfg: RayloraConfig, manifest: DatasetManifest, base_path: str, rows: int = 16) -> None:
    """The tokenizer loads with its chat template, and the template renders and masks a two-turn probe and
    the first train rows, as the workers will."""
    import pyarrow.parquet as pq

    from adapters.build import load_tokenizer
    from pipelines.train.data import PROBE, tokenize_chat

    tokenizer = load_tokenizer(cfg.model.model_copy(update={"base": base_path}))
    first = next(pq.ParquetFile(manifest.train_paths[0]).iter_batches(batch_size=rows, columns=["messages"]), None)
    for messages in [PROBE, *(first.column("messages").to_pylist() if first is not None else [])]:
        tokenize_chat(messages, tokenizer, cfg.train.train_on_responses_only)


def check_eval_rows_fit(cfg: RayloraConfig, manifest: DatasetManifest, eval_sets: dict[str, list[dict]],
                        base_path: str) -> None:
    """Each eval set, and the held-out split, has a conversation with an answer token within
    ``model.max_seq_len``; otherwise its eval loss is over zero tokens, which a worker finds only after Ray has
    started it. Stops at the first row that fits: usually the first."""
    import pyarrow.parquet as pq

    from adapters.build import load_tokenizer
    from pipelines.train.data import tokenize_chat
    from pipelines.train.prepared import trainable_length

    def held_out() -> Iterator[list[dict]]:
        for path in manifest.eval_paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["messages"]):
                yield from batch.column("messages").to_pylist()

    tokenizer = load_tokenizer(cfg.model.model_copy(update={"base": base_path}))
    responses_only, limit = cfg.train.train_on_responses_only, cfg.model.max_seq_len
    named = {f"eval set {name}": (row["messages"] for row in rows) for name, rows in eval_sets.items()
             if not any("text" in row for row in rows)}  # a plain-text row counts every token: it always fits
    for name, conversations in {"the held-out split": held_out(), **named}.items():
        needed = []
        for messages in conversations:
            length = trainable_length(tokenize_chat(messages, tokenizer, responses_only))
            if length is not None and length <= limit:
                break
            needed += [length] if length is not None else []
        else:
            if needed:
                raise ConfigError(f"{name} has no answer token within model.max_seq_len={limit} (its "
                                  f"shortest needs {min(needed)}): set model.max_seq_len={min(needed)} or more")


def check_something_to_evaluate(cfg: RayloraConfig, manifest: DatasetManifest) -> None:
    """A run that evaluates needs eval rows: an empty held-out split and no eval sets would rank checkpoints
    on a loss over nothing."""
    if cfg.train.eval and manifest.num_eval == 0 and not cfg.data.eval_sets:
        raise ConfigError(
            "nothing to evaluate: the curated held-out split is empty and data.eval_sets lists no file: set "
            "data.eval_fraction (or data.eval_size) and rerun `raylora curate`, list data.eval_sets, or turn "
            "evaluation off with train.eval=false train.export=last")
