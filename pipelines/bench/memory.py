"""The memory planner against measurements on a real model: saved activations, step peak tensors and RSS.

    python -m pipelines.bench.memory [MODEL_DIR]     # the tiny model when no MODEL_DIR is given

``adapters.memory`` plans; this module measures what it plans, so the two are compared side by side.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from adapters.build import build_model
from adapters.memory import load_hf_config, plan
from pipelines.config import AdapterConfig, ModelConfig, TrainConfig


def saved_activation_bytes(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Measured: bytes of the distinct tensors autograd saves in one forward pass with loss (parameters excluded).

    Exact on any device: every saved tensor passes through a ``saved_tensors_hooks`` pack hook, and tensors
    sharing a storage are counted once. Compare with ``activation_bytes(...)["saved_for_backward"]``.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages and storage.device.type != "meta":
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids, labels=input_ids)
    return sum(saved.values())


def _read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (the RSS measurement needs Linux)")


def _prepared_step(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, micro_batch: int,
                   seq_len: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    model = build_model(model_cfg, adapter_cfg).model
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seeded = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (micro_batch, seq_len), generator=seeded)
    return model, optimizer, input_ids


def _training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor) -> None:
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()


def _step_peak_worker(model_cfg: dict, adapter_cfg: dict, micro_batch: int, seq_len: int, queue) -> None:
    import gc

    model, optimizer, input_ids = _prepared_step(ModelConfig.model_validate(model_cfg),
                                                 AdapterConfig.model_validate(adapter_cfg), micro_batch, seq_len)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark to the current RSS
    before = _read_status_kib("VmRSS") * 1024
    _training_step(model, optimizer, input_ids)
    queue.put({"rss_before_step": before, "peak_rss": _read_status_kib("VmHWM") * 1024})


class PeakTensorBytes(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that ops create inside the block; a storage counts until it dies.

    This measures what the planner plans (tensors), exactly and the same on every machine. RSS also holds
    allocator slack, thread-pool scratch and lazily initialised kernel buffers, which differ from one CPU to
    the next (on CI's machine a checkpointed step's RSS rose 36 MB above its tensors, here 15 MB).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted = WeakIdKeyDictionary()

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                if storage not in self._counted:
                    self._counted[storage] = nbytes = storage.nbytes()
                    self.live += nbytes
                    weakref.finalize(storage, self._release, nbytes)
                    self.peak = max(self.peak, self.live)
        return out


def measure_step_peak_tensor_bytes(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, micro_batch: int,
                                   seq_len: int) -> int:
    """Measured: the peak bytes of tensors created during one training step (forward, backward, AdamW step).

    Compare with the planner's gradients + optimizer states + activations (the weights exist before the step).
    """
    model, optimizer, input_ids = _prepared_step(model_cfg, adapter_cfg, micro_batch, seq_len)
    with PeakTensorBytes() as tracker:
        _training_step(model, optimizer, input_ids)
    return tracker.peak


def measure_step_peak_rss(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, micro_batch: int,
                          seq_len: int) -> dict[str, int]:
    """Measured: how far one training step (forward, backward, AdamW step) raises the peak RSS, on CPU.

    Runs in a fresh process, so nothing else shares its memory, and with glibc told to serve every
    allocation over 64 KiB by mmap, so freed tensors leave the RSS at once instead of lingering in the heap.
    The peak is Linux's VmHWM, reset just before the step. Compare with the planner's gradients +
    optimizer states + activations (the weights are resident before the step).
    """
    import multiprocessing
    import os

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    old = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    try:
        worker = context.Process(target=_step_peak_worker,
                                 args=(model_cfg.model_dump(), adapter_cfg.model_dump(), micro_batch, seq_len, queue))
        worker.start()
    finally:
        if old is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = old
    result = queue.get(timeout=600)
    worker.join()
    result["step_peak_delta"] = result["peak_rss"] - result["rss_before_step"]
    return result


TINY_BENCH_CASES = {
    "lora-qv": (dict(target_modules="qv"), False),
    "lora-all": (dict(target_modules="all-linear"), False),
    "dora-all": (dict(method="dora"), False),
    "qlora-all": (dict(method="qlora"), False),
    "lora-all-checkpointed": (dict(target_modules="all-linear"), True),
}


def compare_with_measurement(model_dir: str | Path, micro_batch: int = 8, seq_len: int = 256) -> list[dict[str, Any]]:
    """Planned vs measured on a real model, one row per case: saved activations, step peak tensors and RSS."""
    hf_config = load_hf_config(model_dir)
    rows = []
    for case, (adapter, checkpointing) in TINY_BENCH_CASES.items():
        model_cfg = ModelConfig(base=str(model_dir), max_seq_len=seq_len, gradient_checkpointing=checkpointing)
        adapter_cfg = AdapterConfig(**adapter)
        train_cfg = TrainConfig(micro_batch_size=micro_batch, precision="fp32", deepspeed={"stage": 0})
        planned = plan(model_cfg, adapter_cfg, train_cfg, hf_config)["bytes"]
        built = build_model(model_cfg, adapter_cfg)
        built.model.train()
        input_ids = torch.randint(0, hf_config.vocab_size, (micro_batch, seq_len))
        saved = saved_activation_bytes(built.model, input_ids)
        del built
        step_tensors = measure_step_peak_tensor_bytes(model_cfg, adapter_cfg, micro_batch, seq_len)
        step_rss = measure_step_peak_rss(model_cfg, adapter_cfg, micro_batch, seq_len)
        planned_step = planned["gradients"] + planned["optimizer_states"] + planned["activations"]
        rows.append({
            "case": case, "micro_batch": micro_batch, "seq_len": seq_len,
            "saved_activations_planned": planned["activation_detail"]["saved_for_backward"],
            "saved_activations_measured": saved,
            "saved_ratio": round(planned["activation_detail"]["saved_for_backward"] / saved, 3),
            "step_peak_planned": planned_step, "step_peak_tensors_measured": step_tensors,
            "step_tensor_ratio": round(planned_step / step_tensors, 3),
            "step_peak_rss_measured": step_rss["step_peak_delta"],
            "step_rss_ratio": round(planned_step / step_rss["step_peak_delta"], 3),
        })
    return rows


if __name__ == "__main__":
    import sys

    from pipelines.demo import tiny_model_path

    target = sys.argv[1] if len(sys.argv) > 1 else str(tiny_model_path())
    print(json.dumps(compare_with_measurement(target), indent=2))
