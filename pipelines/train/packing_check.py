"""Is packing safe on this model? Checked once at start-up on the real model, not assumed.

Packed examples share a block; the model is called without an attention mask and with position ids that
restart per example, and transformers turns those into a block-diagonal mask
(``masking_utils.find_packed_sequence_indices``, transformers >= 4.54 on torch >= 2.6). An older stack, or a
model whose code builds its own mask (``trust_remote_code``), silently lets an example attend to the one
packed before it. So the worker compares: two examples packed in one block must give the logits each gives
alone; a model that fails trains with packing off, and says so.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from pipelines.config import RayloraConfig
from pipelines.train.data import PROBE, pack_examples, tokenize_chat
from pipelines.train.engine import lr_multiplier

log = logging.getLogger("raylora.train")
# the example packed first: long enough that attending to it would move the second one's logits
CONTEXT = [{"role": "system", "content": "You are a precise assistant. Answer with the result only."},
           {"role": "user", "content": "Sort 9 4 7, then reverse the letters q w e."},
           {"role": "assistant", "content": "4 7 9 and e w q"}]
# logits differ by rounding only when the mask is right: the largest difference over the largest logit
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 5e-2}


@torch.no_grad()
def packed_logits_gap(model: torch.nn.Module, tokenizer: Any) -> float:
    """How far the second of two packed examples' logits are from its logits alone, relative to their size."""
    first, second = tokenize_chat(CONTEXT, tokenizer), tokenize_chat(PROBE, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    (block,) = pack_examples([first, second], len(first.input_ids) + len(second.input_ids), pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout
    packed = model(input_ids=torch.tensor([block.input_ids], device=device),
                   position_ids=torch.tensor([block.position_ids], device=device), use_cache=False).logits[0]
    alone = model(input_ids=torch.tensor([second.input_ids], device=device), use_cache=False).logits[0]
    model.train(was_training)
    start = len(first.input_ids)
    gap = (packed[start:].float() - alone.float()).abs().max()
    return (gap / alone.float().abs().max().clamp_min(1e-6)).item()


def packing_isolates(model: torch.nn.Module, tokenizer: Any) -> bool:
    """True when packed examples do not see each other. Every rank must call it (under ZeRO-3 the forward
    gathers parameters collectively), and every rank gets the same verdict: one that packs while another
    does not would step out of line."""
    import torch.distributed as dist

    dtype = next(model.parameters()).dtype
    isolated = torch.tensor([float(packed_logits_gap(model, tokenizer) <= TOLERANCE.get(dtype, 5e-2))])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(isolated, op=dist.ReduceOp.MIN)
    return bool(isolated.item())


def without_packing(cfg: RayloraConfig, announce: bool) -> RayloraConfig:
    """The config with packing off; ``announce`` says so (rank 0)."""
    if announce:
        import transformers

        log.warning("[raylora train] packing is off: packed examples attend to each other on this model "
                    f"(transformers {transformers.__version__}, torch {torch.__version__}); every example gets "
                    "a block of its own. Use transformers>=4.56 and torch>=2.6, or set train.packing=false")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"packing": False})})


def stretch_schedule(engine: Any, cfg: RayloraConfig, total_steps: int) -> None:
    """Spread the learning-rate schedule over ``total_steps`` (an unpacked epoch holds more steps), before
    the first step; the same warmup and decay as ``engine.build_engine`` sets up."""
    multiplier = lr_multiplier(cfg.train.scheduler, math.ceil(cfg.train.warmup_ratio * total_steps), total_steps)
    schedule = engine.lr_scheduler  # torch's LambdaLR, built by engine.build_engine
    schedule.lr_lambdas = [multiplier] * len(schedule.lr_lambdas)
    for group, base_lr in zip(schedule.optimizer.param_groups, schedule.base_lrs, strict=True):
        group["lr"] = base_lr * multiplier(0)  # the first step's rate, which the old schedule set
