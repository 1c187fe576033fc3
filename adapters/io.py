"""Save / load adapters in standard PEFT format; never write an empty adapter.

Under DeepSpeed ZeRO-3 every rank holds only a shard of each parameter (a zero-sized tensor
locally), so the adapter weights are gathered before saving; an adapter whose tensors are empty
or zero-sized is refused with an error instead of being written silently (a known failure of
other tools).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class EmptyAdapterError(RuntimeError):
    """The adapter state dict is empty or holds zero-sized tensors: it would save nothing."""


def _zero3_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


def adapter_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors, gathered from every ZeRO-3 shard when the model is partitioned."""
    sharded = [p for n, p in model.named_parameters() if p.requires_grad and hasattr(p, "ds_id")]
    if sharded:
        import deepspeed

        with deepspeed.zero.GatheredParameters(sharded, modifier_rank=None):
            state = {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}
    else:
        state = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    check_not_empty(state)
    return state


def check_not_empty(state: dict[str, torch.Tensor]) -> None:
    if not state:
        raise EmptyAdapterError("the adapter has no tensors: check adapter.target_modules against the model")
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        raise EmptyAdapterError(
            f"{len(empty)} of {len(state)} adapter tensors are zero-sized (e.g. {empty[0]}): they are ZeRO-3 shards "
            "that were not gathered; save through adapters.io.save_adapter, which gathers them"
        )


def save_adapter(model: PeftModel, out_dir: str | Path, is_main_process: bool = True) -> Path:
    """Write adapter_config.json + adapter_model.safetensors; every rank must call it under ZeRO-3."""
    out = Path(out_dir)
    state = adapter_state_dict(model)
    if is_main_process:
        model.save_pretrained(out, state_dict=state, safe_serialization=True)
    return out


def load_adapter(base: torch.nn.Module, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
