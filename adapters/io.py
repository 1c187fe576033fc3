"""Save / load adapters in standard PEFT format; never write an empty adapter.

    from adapters.io import save_adapter, load_adapter
    save_adapter(engine.module, "out/adapter", is_main_process=rank == 0)   # every rank calls it
    model = load_adapter(base, "out/adapter")                             # = peft.PeftModel.from_pretrained

The files are PEFT's own (``adapter_config.json`` + ``adapter_model.safetensors``), so plain
``peft.PeftModel.from_pretrained(base, dir)`` loads them, plus the tokenizer the adapter was trained with
(its chat template); when that template added tokens, the base's embeddings must first grow to the
tokenizer (``load_adapter`` does it). Under DeepSpeed ZeRO-3 every rank holds
only a shard of each parameter (a zero-sized tensor locally), so the adapter weights are gathered
before saving; an adapter whose tensors are empty or zero-sized is refused with an error instead
of being written silently (a known failure of other tools).

Full fine-tuning (``adapter.method: full``) has no adapter: ``save_full_model`` writes the whole model with
``save_pretrained`` (safetensors, no adapter_config.json) into the same place, its ZeRO-3 shards gathered and
refused when empty in the same way; ``is_full_model_dir`` tells the two kinds of directory apart.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from adapters.generation import is_full_model_dir

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
TOKENIZER_CONFIG = "tokenizer_config.json"  # present when the adapter was saved with its tokenizer
# Parameter-name parts of everything PEFT saves for a LoRA / DoRA adapter.
ADAPTER_PARAM_TAGS = ("lora_A", "lora_B", "lora_magnitude_vector", "modules_to_save", "lora_embedding",
                      "trainable_tokens")


class EmptyAdapterError(RuntimeError):
    """The adapter state dict is empty or holds zero-sized tensors: it would save nothing."""


def zero3_adapter_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's parameters that DeepSpeed ZeRO-3 has partitioned (they carry a ``ds_id``)."""
    return [p for name, p in model.named_parameters()
            if hasattr(p, "ds_id") and (p.requires_grad or any(tag in name for tag in ADAPTER_PARAM_TAGS))]


def adapter_state_dict(model: PeftModel, gather: bool = True) -> dict[str, torch.Tensor]:
    """The adapter's tensors on CPU, keyed as PEFT saves them; gathered from every ZeRO-3 shard when partitioned.

    Under ZeRO-3 every rank must call this (the gather is a collective). ``gather=False`` exists only to
    show what a save without the gather would hold: zero-sized shards, which ``check_not_empty`` refuses.
    """
    model = unwrap(model)
    sharded = zero3_adapter_params(model) if gather else []
    gathered = contextlib.nullcontext()
    if sharded:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)
    with gathered:
        # never the base's whole embedding matrices (PEFT adds them when the vocabulary grew): the rows a chat
        # template added are trained as trainable tokens, whose saved values restore them
        state = {k: v.detach().clone().cpu()
                 for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    check_not_empty(state)
    return state


def check_not_empty(state: dict[str, torch.Tensor], kind: str = "adapter", saver: str = "save_adapter") -> None:
    """Refuse a state dict that would save nothing; ``kind`` and ``saver`` name what is saved and the function
    that gathers it (a full fine-tuned model: "model", "save_full_model")."""
    if not state:
        raise EmptyAdapterError(f"the {kind} has no tensors: check adapter.target_modules against the model")
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        raise EmptyAdapterError(
            f"{len(empty)} of {len(state)} {kind} tensors are zero-sized (e.g. {empty[0]}): they are ZeRO-3 shards "
            f"that were not gathered; save through adapters.io.{saver} on every rank, which gathers them"
        )


def unwrap(model: torch.nn.Module, wanted: type = PeftModel,
           what: str = "a PEFT model (adapters.build.build_model(...).model)") -> Any:
    """The ``wanted`` model (a PeftModel; a transformers model under full fine-tuning) inside a DeepSpeed engine or
    DistributedDataParallel wrapper (or the model itself)."""
    while not isinstance(model, wanted) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    if not isinstance(model, wanted):
        raise TypeError(f"expected {what}, got {type(model).__name__}")
    return model


def save_adapter(model: PeftModel, out_dir: str | Path, is_main_process: bool = True,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors; under ZeRO-3 every rank must call it.

    ``model`` may also be the DeepSpeed engine or DDP wrapper around it. Only the main process writes;
    the others take part in the gather and return the same path. ``tokenizer`` (with the chat template and
    any tokens it added) is saved beside it, so the adapter loads and generates anywhere as it was trained.
    """
    model, out = unwrap(model), Path(out_dir)
    state = adapter_state_dict(model)
    if is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = copy.deepcopy(model.peft_config[model.active_adapter])
        config.inference_mode = True
        config.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
    return out


def unwrap_full_model(model: torch.nn.Module) -> PreTrainedModel:
    return unwrap(model, PreTrainedModel, "a transformers model")


def full_model_state_dict(model: PreTrainedModel, is_main_process: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict on CPU, on the main process (empty on the others); each ZeRO-3
    partitioned parameter gathered from every shard first, one at a time, so a rank's device holds at most one
    gathered parameter beyond its shards (the main process keeps the CPU copies it writes). Under ZeRO-3 every
    rank must call it (each gather is a collective)."""
    state = {}
    for name, tensor in unwrap_full_model(model).state_dict(keep_vars=True).items():
        gathered = contextlib.nullcontext()
        if hasattr(tensor, "ds_id"):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)
        with gathered:
            if is_main_process:
                state[name] = tensor.detach().clone().cpu()
    if is_main_process:
        check_not_empty(state, kind="model", saver="save_full_model")
    return state


def save_full_model(model: PreTrainedModel, out_dir: str | Path, is_main_process: bool = True,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write the whole model as ``save_pretrained`` does (config.json + safetensors weights); under ZeRO-3
    every rank must call it. ``model`` may be the DeepSpeed engine or DDP wrapper around it; only the main
    process writes. ``tokenizer`` is saved beside it, as with an adapter."""
    model, out = unwrap_full_model(model), Path(out_dir)
    state = full_model_state_dict(model, is_main_process)
    if is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), state_dict=state, safe_serialization=True)
        config = copy.deepcopy(model.config)
        config.use_cache = True  # training switched the cache off; whoever generates with the saved model wants it
        config.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
    return out


def check_trained_dir(trained_dir: str | Path) -> Path:
    """``trained_dir`` is a saved adapter or a full fine-tuned model (what a train run exports either way)."""
    if is_full_model_dir(trained_dir):
        return Path(trained_dir)
    return check_adapter_dir(trained_dir)


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    path = Path(adapter_dir)
    if is_full_model_dir(path):
        raise FileNotFoundError(f"{path} holds a full fine-tuned model (adapter.method=full), not an adapter: load "
                                "it with AutoModelForCausalLM.from_pretrained, or export it with --merged")
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a saved adapter (missing {', '.join(missing)}): "
                                "pass the directory that adapters.io.save_adapter wrote")
    return path


def load_adapter(base: torch.nn.Module, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    """The base with the saved adapter on top, exactly as ``peft.PeftModel.from_pretrained`` loads it.

    A 4-bit base loaded elsewhere is switched to bitsandbytes' standard layout first (see
    ``adapters.generation.keep_4bit_layout``), so its logits match the ones the adapter was trained with. When the
    adapter carries its tokenizer and that has tokens past the base's embeddings (a chat template added
    them), the embeddings grow first; the adapter's trained rows then fill them.
    """
    from adapters.build import fit_embeddings
    from adapters.generation import keep_4bit_layout

    path = check_adapter_dir(adapter_dir)
    keep_4bit_layout(base)
    if (path / TOKENIZER_CONFIG).is_file():
        fit_embeddings(base, AutoTokenizer.from_pretrained(str(path)))
    return PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
