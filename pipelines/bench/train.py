"""Benchmark of the train stage, measured side by side in one run:

    raylora bench train configs/demo.yaml
    raylora bench train configs/demo.yaml train.max_steps=80 train.micro_batch_size=8 model.max_seq_len=256

1. tokens/s of the full raylora path (prepared dataset + DeepSpeed engine in one Ray Train worker) against a
   bare PyTorch + PEFT loop (same adapters.build model, AdamW, batch and sequence length, batches already
   in memory, the same number of CPU threads); the aim is a ratio >= 0.95;
2. 2-worker data-parallel scaling: every rank's tokens over the wall time of the same steps (the workers'
   ``tokens_per_s_all_ranks``), over 1 worker's; the aim is >= 1.7x on 2 cores;
3. model FLOPs utilisation of each against this machine's measured fp32 matmul peak at the thread count each
   worker actually ran with;
4. where a step's time goes, per phase and side by side: waiting for data, forward, backward (ZeRO's gradient
   reduction included), optimizer step, logging, and the rest; and what one gradient all-reduce costs between
   two processes here (gloo).

Throughput is the median over windows of ``train.log_every`` steps, leaving out the first window (warm-up); the
phases are those of the median window, so they add up to its wall time. The bare loop runs before and after the
raylora runs and its windows are pooled, so that a change in the machine's load does not favour either side;
the load average is printed beside the figures: on a shared machine they are only as good as the cores were free.
Needs the curated dataset (``raylora curate CONFIG``).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.artifacts import DatasetManifest, read_curated_manifest
from pipelines.config import RayloraConfig
from pipelines.errors import StageError
from pipelines.models import resolve_base_model
from pipelines.tracking import metric_history

WARMUP_WINDOWS = 1
PHASES = ("data", "forward", "backward", "optimizer", "logging")
ALLREDUCE_REPEATS = 30


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
class PathResult:
    """One measured path: its throughput (all its workers together) and per-step milliseconds by phase."""

    name: str
    tokens_per_s: float
    step_ms: float
    phase_ms: dict[str, float]
    workers: int = 1
    threads: int = 1

    @property
    def other_ms(self) -> float:
        """Step time no phase accounts for: the loop's own Python between the phases."""
        return self.step_ms - sum(self.phase_ms.values())


@dataclass
class BenchResult:
    bare: PathResult
    one: PathResult
    two: PathResult
    peaks: dict[int, float]  # matmul FLOP/s by thread count
    flops_per_token: float
    allreduce_ms: float  # one gradient all-reduce between two processes
    trainable_params: int
    cfg: RayloraConfig
    load: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # os.getloadavg() by moment

    @property
    def ratio(self) -> float:
        return self.one.tokens_per_s / self.bare.tokens_per_s

    @property
    def scaling(self) -> float:
        return self.two.tokens_per_s / self.one.tokens_per_s

    def mfu(self, path: PathResult) -> float:
        """Per worker: its share of the tokens against the matmul peak at its own thread count."""
        return path.tokens_per_s / path.workers * self.flops_per_token / self.peaks[path.threads]

    def __str__(self) -> str:
        t, paths = self.cfg.train, (self.bare, self.one, self.two)
        lines = [
            f"raylora bench train: {self.cfg.adapter.label} on {self.cfg.model.base}, "
            f"micro batch {t.micro_batch_size} x {self.cfg.model.max_seq_len} tokens, {t.max_steps} steps, "
            f"ZeRO-{t.deepspeed.stage}, {self.trainable_params:,} trainable params",
            "load average (1, 5, 15 min): " + "; ".join(f"{moment} {a:.1f} {b:.1f} {c:.1f}"
                                                          for moment, (a, b, c) in self.load.items()),
            "measured fp32 matmul peak: " + ", ".join(f"{peak / 1e9:.1f} GFLOP/s at {threads} thread(s)"
                                                      for threads, peak in sorted(self.peaks.items()))
            + f"; model FLOPs per token: {self.flops_per_token / 1e6:.2f} MFLOP",
            f"{'path':<44}{'threads':>8}{'tokens/s':>10}{'MFU/worker':>12}",
            *(f"{p.name:<44}{p.threads:>8}{p.tokens_per_s:>10.0f}{self.mfu(p):>11.1%}" for p in paths),
            f"raylora / bare: {self.ratio:.3f} (aim >= 0.95)",
            f"2-worker scaling: {self.scaling:.2f}x of 1 worker, every rank's tokens over the wall time "
            "(aim >= 1.7x on 2 cores)",
            "",
            f"per step, ms (median over windows){'bare':>11}{'1 worker':>10}{'2 workers':>11}",
            *(f"  {phase:<35}" + "".join(f"{p.phase_ms.get(phase, 0.0):>10.1f}" for p in paths)
              for phase in PHASES),
            f"  {'other (loop, engine calls between)':<35}" + "".join(f"{p.other_ms:>10.1f}" for p in paths),
            f"  {'wall':<35}" + "".join(f"{p.step_ms:>10.1f}" for p in paths),
            f"DeepSpeed engine over the bare loop (forward + backward + optimizer), 1 worker: "
            f"{self.engine_overhead_ms(self.one):+.1f} ms/step, 2 workers: {self.engine_overhead_ms(self.two):+.1f}"
            " ms/step",
            f"one gradient all-reduce ({self.trainable_params:,} fp32 values, 2 processes, gloo): "
            f"{self.allreduce_ms:.2f} ms",
        ]
        return "\n".join(lines)

    def engine_overhead_ms(self, path: PathResult) -> float:
        compute = ("forward", "backward", "optimizer")
        return sum(path.phase_ms.get(p, 0.0) for p in compute) - sum(self.bare.phase_ms.get(p, 0.0) for p in compute)


@dataclass
class Window:
    """``train.log_every`` steps: throughput, wall milliseconds per step and per phase."""

    tokens_per_s: float
    step_ms: float
    phase_ms: dict[str, float]


def median_window(windows: list[Window]) -> Window:
    """The window of median throughput (the lower middle one of an even count)."""
    ordered = sorted(windows, key=lambda w: w.tokens_per_s)
    return ordered[(len(ordered) - 1) // 2]


def after_warmup(windows: list[Window]) -> list[Window]:
    return windows[WARMUP_WINDOWS:] or windows


def bare_loop(cfg: RayloraConfig, rows: list[dict], threads: int) -> tuple[list[Window], float, int]:
    """The reference: adapters.build model, torch AdamW, batches prepared in memory, no Ray, no DeepSpeed.
    Returns (its windows after warm-up, model FLOPs per token, trainable params)."""
    from adapters.build import build_model
    from pipelines.train.data import model_inputs, train_batches
    from pipelines.train.engine import StepPhases

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
        window, windows = cfg.train.log_every, []
        phases, start = StepPhases(), time.perf_counter()
        for step in range(cfg.train.max_steps):
            with phases.timed("data"):
                batch = data[step % len(data)]
            with phases.timed("forward"):
                loss = model(**model_inputs(batch), use_cache=False).loss
            with phases.timed("backward"):
                loss.backward()
            with phases.timed("optimizer"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            with phases.timed("logging"):
                loss.item()
            if (step + 1) % window == 0:
                elapsed = time.perf_counter() - start
                windows.append(Window(tokens_per_s=window * batch["input_ids"].numel() / elapsed,
                                      step_ms=1000 * elapsed / window,
                                      phase_ms={p: phases.per_step_ms(window)[f"time/{p}_ms"] for p in PHASES}))
                phases, start = StepPhases(), time.perf_counter()
        flops = model_flops_per_token(model, built.trainable_params, cfg.model.max_seq_len)
        return after_warmup(windows), flops, built.trainable_params
    finally:
        torch.set_num_threads(previous)


def raylora_path(cfg: RayloraConfig, manifest: DatasetManifest, name: str) -> PathResult:
    """A real ``train`` run: its median log window (from its MLflow history) of throughput (every rank's tokens
    over the window's wall time) and rank 0's phases."""
    from pipelines.train import train

    result = train(cfg, manifest)

    def history(key: str) -> list[float]:
        values = [value for _, value in metric_history(cfg.tracking_uri, result.mlflow_run_id, key)]
        if not values:
            raise StageError(f"the bench run {cfg.run_name} logged no {key}")
        return values

    phases = {p: history(f"time/{p}_ms") for p in PHASES}
    windows = [Window(tokens_per_s=tps, step_ms=ms, phase_ms={p: phases[p][i] for p in PHASES})
               for i, (tps, ms) in enumerate(zip(history("tokens_per_s_all_ranks"), history("time/step_ms"),
                                                 strict=True))]
    middle = median_window(after_warmup(windows))
    return PathResult(name=name, tokens_per_s=middle.tokens_per_s, step_ms=middle.step_ms, phase_ms=middle.phase_ms,
                      workers=cfg.cluster.num_workers, threads=int(result.metrics["threads"]))


def allreduce_worker(rank: int, port: int, numel: int, out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    gradient, times = torch.randn(numel), []
    for _ in range(ALLREDUCE_REPEATS):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(gradient)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.write_text(str(1000 * statistics.median(times)))
    dist.destroy_process_group()


def measure_allreduce_ms(numel: int, workdir: Path) -> float:
    """Median milliseconds of one all-reduce of ``numel`` fp32 values between two local processes over gloo:
    what a data-parallel step pays to average the adapter's gradients here."""
    import torch.multiprocessing

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = workdir / "allreduce_ms.txt"
    torch.multiprocessing.spawn(allreduce_worker, args=(port, numel, out), nprocs=2)
    return float(out.read_text())


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
    # one CPU (one thread) each: no data feed needs a CPU beside them any more
    two = cfg.model_copy(update={"train": train_cfg, "run_name": f"{cfg.run_name}-bench-2w",
                                 "cluster": cfg.cluster.model_copy(update={"num_workers": 2, "cpus_per_worker": 1})})
    threads = max(1, int(cfg.cluster.cpus_per_worker))  # what a CPU worker runs (worker.worker_threads)
    rows = read_rows(manifest.train_paths)
    for stale in (one, two):  # a benchmark always starts from scratch, never resumes or reports an earlier run
        storage = Path(stale.cluster.storage_path or stale.path("ray_results"))
        for run_dir in [stale.path("train", stale.run_name), *storage.glob(f"{stale.run_name}-*")]:
            shutil.rmtree(run_dir, ignore_errors=True)
    load = {"start": os.getloadavg()}
    bare_before, flops, trainable = bare_loop(one, rows, threads)
    raylora_one = raylora_path(one, manifest, "raylora: prepared data + DeepSpeed, 1 worker")
    load["after 1 worker"] = os.getloadavg()
    raylora_two = raylora_path(two, manifest, "raylora, 2 workers (all ranks' tokens / wall)")
    load["after 2 workers"] = os.getloadavg()
    bare_after, _, _ = bare_loop(one, rows, threads)
    load["end"] = os.getloadavg()
    middle = median_window(bare_before + bare_after)
    bare = PathResult(name="bare PyTorch + PEFT, 1 process (before + after)", tokens_per_s=middle.tokens_per_s,
                      step_ms=middle.step_ms, phase_ms=middle.phase_ms, threads=threads)
    peaks = {n: measure_matmul_peak(n) for n in {bare.threads, raylora_one.threads, raylora_two.threads}}
    allreduce = measure_allreduce_ms(trainable, cfg.path("train").resolve())
    return BenchResult(bare=bare, one=raylora_one, two=raylora_two, peaks=peaks, flops_per_token=flops,
                       allreduce_ms=allreduce, trainable_params=trainable, cfg=one, load=load)
