"""The per-worker engine: DeepSpeed config, optimizer, learning-rate schedule, and one optimizer step.

Plain functions that run without Ray (a GPU box without Ray checks the CUDA path with them): torch.distributed
must be initialised first (Ray Train does it; without Ray, ``deepspeed.init_distributed``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError
from pipelines.models import resolve_base_model
from pipelines.train.build_locks import clear_stale_build_locks
from pipelines.train.data import model_inputs


def deepspeed_config(cfg: RayloraConfig) -> dict[str, Any]:
    """The DeepSpeed JSON: the referenced file (if any) with every value the pipeline owns filled in from
    the config, so batch sizes, clipping, precision and ZeRO stage never disagree with it."""
    ds = cfg.train.deepspeed
    base: dict[str, Any] = {}
    if ds.config_file:
        path = Path(ds.config_file)
        if not path.is_file():
            raise ConfigError(f"train.deepspeed.config_file={path} does not exist: point it at configs/deepspeed/*.json")
        try:
            base = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"train.deepspeed.config_file={path} is not valid JSON: {err}") from err
        for owned in ("optimizer", "scheduler"):
            if owned in base:
                raise ConfigError(f"{path} sets '{owned}': remove it; raylora sets it from train.optimizer / "
                                  "train.scheduler")
    zero = dict(base.get("zero_optimization", {}))
    if zero.get("stage", ds.stage) != ds.stage:
        raise ConfigError(f"{ds.config_file} sets ZeRO stage {zero['stage']} but train.deepspeed.stage={ds.stage}: "
                          f"set train.deepspeed.stage={zero['stage']}")
    zero["stage"] = ds.stage
    for key, wanted, option in (("offload_optimizer", ds.offload_optimizer, "offload_optimizer"),
                                ("offload_param", ds.offload_params, "offload_params")):
        in_file = zero.get(key, {}).get("device", "none") != "none"
        if in_file and not wanted:
            raise ConfigError(f"{ds.config_file} sets {key} but train.deepspeed.{option}=false: "
                              f"set train.deepspeed.{option}=true")
        if wanted:
            # pinned host memory only helps (and only works) with a GPU to copy to
            zero[key] = {**zero.get(key, {}), "device": "cpu", "pin_memory": cfg.cluster.use_gpu}
    out = {key: value for key, value in base.items() if key not in ("bf16", "fp16")}
    out.update({
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.cluster.num_workers,
        "gradient_clipping": cfg.train.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.train.precision == "bf16"},
        "fp16": {"enabled": cfg.train.precision == "fp16"},
        "zero_allow_untested_optimizer": True,  # the optimizer is a plain torch one (AdamW / SGD), built here
        "zero_force_ds_cpu_optimizer": False,  # and stays one under ZeRO-Offload (DeepSpeed refuses it by default)
        "steps_per_print": base.get("steps_per_print", 10**9),
        "wall_clock_breakdown": False,
    })
    return out


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: RayloraConfig) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_multiplier(scheduler: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup, then cosine to 0, linear to 0, or constant."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


@dataclass
class Engine:
    """A DeepSpeed engine and what the loop needs beside it."""

    engine: Any  # deepspeed.DeepSpeedEngine
    tokenizer: Any
    trainable_params: int
    total_params: int

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module


def use_cpu_accelerator(cfg: RayloraConfig) -> None:
    """DeepSpeed picks its accelerator at import; on CPU it must be told before ``import deepspeed``."""
    if not cfg.cluster.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"


def quiet_libraries() -> None:
    """Workers print one line per log window on rank 0 and little else: library chatter goes to WARNING."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "bitsandbytes", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for module in ("deepspeed", "torch", "bitsandbytes", "peft", "transformers"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


def build_engine(cfg: RayloraConfig, total_steps: int, base_path: str | None = None) -> Engine:
    """Model through ``adapters`` -> DeepSpeed engine with the configured ZeRO stage, optimizer and schedule.

    ``base_path`` is the resolved ``model.base`` (the driver resolves it once per run); None resolves it here.
    torch.distributed must be initialised (Ray Train does it; without Ray, ``init_process_group``)."""
    use_cpu_accelerator(cfg)
    quiet_libraries()
    import deepspeed

    from adapters.build import build_model

    clear_stale_build_locks()
    deepspeed.init_distributed(dist_backend="nccl" if cfg.cluster.use_gpu else "gloo")
    torch.manual_seed(cfg.train.seed)
    base_path = base_path or resolve_base_model(cfg.model.base)
    built = build_model(cfg.model.model_copy(update={"base": base_path}), cfg.adapter)
    params = [p for p in built.model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    warmup = math.ceil(cfg.train.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.train.scheduler, warmup, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=built.model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(cfg), dist_init_required=False)
    return Engine(engine=engine, tokenizer=built.tokenizer, trainable_params=built.trainable_params,
                  total_params=built.total_params)


@dataclass
class StepPhases:
    """Seconds spent in each phase of the steps since the last reset: where a step's time goes."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)

    def per_step_ms(self, steps: int) -> dict[str, float]:
        """``time/<phase>_ms``: the mean milliseconds per step of each phase."""
        return {f"time/{phase}_ms": 1000 * seconds / max(steps, 1) for phase, seconds in self.seconds.items()}


def train_step(engine: Any, micro_batches: list[dict], phases: StepPhases | None = None) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss. ``phases`` adds up the
    seconds of forward, backward (gradient reduction included, where ZeRO does it) and optimizer (DeepSpeed's
    step: gradient reduction, clipping, the optimizer, the parameter update).

    No attention mask: with position ids that restart per packed example, transformers masks attention
    block-diagonally, so packed examples never see each other."""
    phases = phases if phases is not None else StepPhases()
    engine.train()
    losses = []
    for batch in micro_batches:
        with phases.timed("forward"):
            loss = engine(**model_inputs(batch, engine.device), use_cache=False).loss
        with phases.timed("backward"):
            engine.backward(loss)
        with phases.timed("optimizer"):
            engine.step()
        losses.append(loss.detach())
    return torch.stack(losses).mean().item()  # one device-to-host sync per step, not one per micro-batch
