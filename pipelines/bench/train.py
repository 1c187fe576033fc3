"""Benchmark of the train stage, measured side by side in one run:

    raylora bench train configs/demo.yaml
    raylora bench train configs/demo.yaml train.max_steps=40 train.micro_batch_size=8 model.max_seq_len=256

1. tokens/s of the full raylora path (Ray Data feed + DeepSpeed engine in one Ray Train worker) against a
   bare PyTorch + PEFT loop (same adapters.build model, AdamW, batch and sequence length, batches already
   in memory, the same number of CPU threads); the aim is a ratio >= 0.9;
2. model FLOPs utilisation of both against this machine's measured fp32 matmul peak (same thread count);
3. 2-worker data-parallel scaling: aggregate tokens/s of 2 workers over 1 worker.

Throughput is the median over windows of ``train.log_every`` steps, leaving out the first window (warm-up).
Needs the curated dataset (``raylora curate CONFIG``).
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.artifacts import DatasetManifest, read_curated_manifest
from pipelines.config import RayloraConfig
from pipelines.errors import StageError
from pipelines.models import resolve_base_model
from pipelines.tracking import metric_history

WARMUP_WINDOWS = 1


def measure_matmul_peak(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """fp32 FLOP/s of a square matmul with ``threads`` threads: the best of ``repeats`` (the peak)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return 2 * size**3 / best
    finally:
        torch.set_num_threads(previous)


def model_flops_per_token(model: torch.nn.Module, trainable_params: int, seq_len: int) -> float:
    """Training FLOPs per token of an adapter on a frozen base: forward (2 per weight) and input gradients
    (2 per weight) through every matmul weight, weight gradients (2 per weight) only for the adapter, plus
    causal attention scores (QK^T and AV, mean context seq_len / 2, times 3 for forward and backward)."""
    config = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    attention = 3 * 2 * 2 * config.num_hidden_layers * config.hidden_size * seq_len / 2
    return 4 * matmul_params + 2 * trainable_params + attention


@dataclass
class BenchResult:
    bare_tokens_per_s: float
    raylora_tokens_per_s: float
    two_worker_tokens_per_s: float
    peak_flops: float
    flops_per_token: float
    threads: int
    cfg: RayloraConfig

    @property
    def ratio(self) -> float:
        return self.raylora_tokens_per_s / self.bare_tokens_per_s

    @property
    def scaling(self) -> float:
        return self.two_worker_tokens_per_s / self.raylora_tokens_per_s

    def mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s * self.flops_per_token / self.peak_flops

    def __str__(self) -> str:
        t = self.cfg.train
        rows = [
            ("bare PyTorch + PEFT, 1 process", self.bare_tokens_per_s, self.mfu(self.bare_tokens_per_s)),
            ("raylora: Ray Data + DeepSpeed, 1 worker", self.raylora_tokens_per_s, self.mfu(self.raylora_tokens_per_s)),
            ("raylora, 2 workers (aggregate)", self.two_worker_tokens_per_s,
             self.mfu(self.two_worker_tokens_per_s / 2)),
        ]
        lines = [
            f"raylora bench train: {self.cfg.adapter.method} r={self.cfg.adapter.r} on {self.cfg.model.base}, "
            f"micro batch {t.micro_batch_size} x {self.cfg.model.max_seq_len} tokens, {t.max_steps} steps, "
            f"ZeRO-{t.deepspeed.stage}, {self.threads} thread(s) per worker",
            f"measured fp32 matmul peak: {self.peak_flops / 1e9:.1f} GFLOP/s per worker; "
            f"model FLOPs per token: {self.flops_per_token / 1e6:.2f} MFLOP",
            f"{'path':<42}{'tokens/s':>12}{'MFU/worker':>12}",
            *(f"{name:<42}{tps:>12.0f}{mfu:>11.1%}" for name, tps, mfu in rows),
            f"raylora / bare: {self.ratio:.3f} (aim >= 0.9)",
            f"2-worker scaling: {self.scaling:.2f}x of 1 worker (ideal 2.00x on 2 free cores)",
        ]
        return "\n".join(lines)


def bare_loop_tokens_per_s(cfg: RayloraConfig, rows: list[dict], threads: int) -> tuple[float, float]:
    """The reference: adapters.build model, torch AdamW, batches prepared in memory, no Ray, no DeepSpeed.
    Returns (median tokens/s over windows, model FLOPs per token)."""
    from adapters.build import build_model
    from pipelines.train.data import model_inputs, train_batches

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.train.seed)
        built = build_model(cfg.model.model_copy(update={"base": resolve_base_model(cfg.model.base)}), cfg.adapter)
        model = built.model
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
        data = list(train_batches(rows, built.tokenizer, seq_len=cfg.model.max_seq_len,
                                  micro_batch_size=cfg.train.micro_batch_size, seed=cfg.train.seed,
                                  packing=cfg.train.packing, responses_only=cfg.train.train_on_responses_only))
        if not data:
            raise StageError("too little train data for one batch: lower train.micro_batch_size")
        windows, window, start = [], cfg.train.log_every, time.perf_counter()
        for step in range(cfg.train.max_steps):
            batch = data[step % len(data)]
            loss = model(**model_inputs(batch), use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            if (step + 1) % window == 0:
                elapsed = time.perf_counter() - start
                windows.append(window * batch["input_ids"].numel() / elapsed)
                start = time.perf_counter()
        flops = model_flops_per_token(model, built.trainable_params, cfg.model.max_seq_len)
        return statistics.median(windows[WARMUP_WINDOWS:] or windows), flops
    finally:
        torch.set_num_threads(previous)


def raylora_tokens_per_s(cfg: RayloraConfig, manifest: DatasetManifest) -> float:
    """Median tokens/s per worker over log windows of a real ``train`` run (from its MLflow history)."""
    from pipelines.train import train

    result = train(cfg, manifest)
    values = [value for _, value in metric_history(cfg.tracking_uri, result.mlflow_run_id, "tokens_per_s")]
    return statistics.median(values[WARMUP_WINDOWS:] or values)


def bench_train(cfg: RayloraConfig, config_path: str) -> BenchResult:
    """Bare loop, raylora with 1 worker, raylora with 2 workers; same model, batch, sequence length and steps."""
    from pipelines.train.data import read_rows

    manifest = read_curated_manifest(cfg, config_path)
    # no eval or checkpoint inside the measured steps: one at the end; the steps are fixed
    steps = cfg.train.max_steps or 40
    train_cfg = cfg.train.model_copy(update={
        "max_steps": steps, "eval_every": steps, "checkpoint_every": steps, "eval_generate_limit": 1,
        "log_every": max(1, steps // 8), "optimizer": "adamw", "grad_accum": 1})
    one = cfg.model_copy(update={"train": train_cfg, "run_name": f"{cfg.run_name}-bench-1w",
                                 "cluster": cfg.cluster.model_copy(update={"num_workers": 1})})
    two = cfg.model_copy(update={"train": train_cfg, "run_name": f"{cfg.run_name}-bench-2w",
                                 "cluster": cfg.cluster.model_copy(update={"num_workers": 2, "cpus_per_worker": 0.5})})
    threads = max(1, int(cfg.cluster.cpus_per_worker))  # Ray gives a worker as many threads as whole CPUs
    rows = read_rows(manifest.train_paths)
    for stale in (one, two):  # a benchmark always starts from scratch, never resumes or reports an earlier run
        storage = Path(stale.cluster.storage_path or stale.path("ray_results"))
        for run_dir in [stale.path("train", stale.run_name), *storage.glob(f"{stale.run_name}-*")]:
            shutil.rmtree(run_dir, ignore_errors=True)
    peak = measure_matmul_peak(threads)
    bare, flops = bare_loop_tokens_per_s(one, rows, threads)
    raylora = raylora_tokens_per_s(one, manifest)
    two_worker = 2 * raylora_tokens_per_s(two, manifest)  # rank 0's rate; every rank runs the same batches
    return BenchResult(bare_tokens_per_s=bare, raylora_tokens_per_s=raylora, two_worker_tokens_per_s=two_worker,
                       peak_flops=peak, flops_per_token=flops, threads=threads, cfg=one)
