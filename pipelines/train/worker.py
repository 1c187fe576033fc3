"""One Ray Train worker: the training loop, written as the story it is.

    open the prepared dataset -> build the engine -> resume from the latest checkpoint -> for each step:
        train, log, maybe evaluate, maybe checkpoint -> until total_steps

The worker reads the prepared dataset (``prepared.py``: rows tokenised once by the driver) from its
memory-mapped file: no tokenising and no Ray Data feed competes with the step for the worker's core.
Metrics leave the worker through ``ray.train.report`` (so Ray Tune can wrap a run) and rank 0's metric
logger; progress lines come from rank 0 only. Every log window also says where the step time went
(``time/<phase>_ms``) and the throughput of all ranks together. The pieces it calls (``build_engine``,
``train_step``, ``prepared_batches``, ``evaluate``) run without Ray too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.config import RayloraConfig
from pipelines.console import say
from pipelines.errors import ConfigError
from pipelines.tracking import MetricLogger
from pipelines.train.checkpoint import load_checkpoint, report_checkpoint
from pipelines.train.data import IGNORE_INDEX, PackingStats, grouped, read_rows, truncation_metrics
from pipelines.train.engine import Engine, StepPhases, build_engine, quiet_libraries, train_step
from pipelines.train.evaluate import evaluate
from pipelines.train.packing_check import packing_isolates, stretch_schedule, without_packing
from pipelines.train.prepared import PreparedRows, prepared_batches

HELD_OUT = ""  # the name of the curated held-out split among the eval sets


@dataclass
class TrainState:
    """Where the run is: saved in every checkpoint, restored on resume."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # optimizer steps already taken in this epoch: a resumed epoch skips them
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the last reported metrics

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LogWindow:
    """Loss, tokens, wall time and where it went, since the last progress line. The wall clock runs through
    everything the steps do (waiting for data, the step, logging) and leaves out evaluation and checkpoints."""

    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    phases: StepPhases = field(default_factory=StepPhases)
    started: float = field(default_factory=time.perf_counter)
    paused: float = 0.0  # seconds of evaluation and checkpointing inside the window

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def close(self) -> dict[str, float]:
        """The window's mean loss, this rank's tokens/s, every rank's tokens over the window's wall time (the
        slowest rank's: ranks step together), and the mean milliseconds per step of each phase. Every rank
        must call it; the window starts over."""
        import torch.distributed as dist

        ended = time.perf_counter()
        seconds = max(ended - self.started - self.paused, 1e-9)
        tokens, slowest = torch.tensor([float(self.tokens)]), torch.tensor([seconds])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(tokens)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        steps = len(self.losses)
        summary = {"train_loss": sum(self.losses) / steps, "tokens_per_s": self.tokens / seconds,
                   "tokens_per_s_all_ranks": tokens.item() / slowest.item(),
                   "time/step_ms": 1000 * seconds / steps, **self.phases.per_step_ms(steps)}
        self.losses, self.tokens, self.phases = [], 0, StepPhases()
        # The next window's clock starts where this one's stopped, so the all-reduce above and the logging
        # after it are counted once: in the next window's wall time and its logging phase.
        self.started, self.paused = ended, 0.0
        return summary


def progress(message: str) -> None:
    """Rank 0's progress line, on the user's terminal (Ray keeps workers' own output in its log files)."""
    say(f"[raylora train] {message}")


def peak_memory_mib(use_gpu: bool) -> float:
    if use_gpu and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker_threads(cfg: RayloraConfig) -> int:
    """Threads for a CPU worker's matmuls: one per whole CPU it was given (at least one), so that workers on
    one machine do not oversubscribe its cores."""
    return max(1, int(cfg.cluster.cpus_per_worker))


def steps_per_epoch(rows: PreparedRows, cfg: RayloraConfig, rank: int, world_size: int) -> int:
    """Optimizer steps in one epoch of this rank's shard, agreed on by every rank (the minimum), so that
    all ranks stop each epoch together. A counting pass over the prepared rows: packing only."""
    import torch.distributed as dist

    n = sum(1 for _ in prepared_batches(rows, seq_len=cfg.model.max_seq_len,
                                        micro_batch_size=cfg.train.micro_batch_size, rank=rank,
                                        world_size=world_size, seed=cfg.train.seed, packing=cfg.train.packing))
    count = torch.tensor([n // cfg.train.grad_accum])
    if dist.is_initialized() and world_size > 1:
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
    if count.item() == 0:
        raise ConfigError(f"rank {rank} has too little data for one step: lower train.micro_batch_size or "
                          "train.grad_accum, or use fewer cluster.num_workers")
    return int(count.item())


@dataclass
class Worker:
    """What one rank holds for the whole run."""

    cfg: RayloraConfig
    built: Engine
    rows: PreparedRows  # every rank's rows; epoch_steps takes this rank's shard
    rank: int
    world_size: int
    steps_per_epoch: int | None  # None when train.max_steps sets the length instead of epochs
    total_steps: int
    eval_sets: dict[str, list[dict]]  # HELD_OUT (the curated split) and each of data.eval_sets by name
    metrics_log: MetricLogger
    test_hooks: dict[str, Any] = field(default_factory=dict)  # test-only, see driver.test_hooks_from_env
    packing: PackingStats = field(default_factory=PackingStats)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def resume(self) -> TrainState:
        """The latest checkpoint's state, or a fresh one."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return TrainState()
        with checkpoint.as_directory() as ckpt_dir:
            saved = load_checkpoint(self.built.engine, Path(ckpt_dir), self.rank)
        return TrainState(**{f.name: saved[f.name] for f in dataclasses.fields(TrainState) if f.name in saved})

    def epoch_steps(self, state: TrainState) -> Iterator[list[dict[str, torch.Tensor]]]:
        """The micro-batch groups of ``state.epoch`` that are still to train (a resumed epoch skips the rest)."""
        t = self.cfg.train
        batches = prepared_batches(self.rows, seq_len=self.cfg.model.max_seq_len, micro_batch_size=t.micro_batch_size,
                                   rank=self.rank, world_size=self.world_size, seed=t.seed + state.epoch,
                                   packing=t.packing, stats=self.packing)
        for index, group in enumerate(grouped(batches, t.grad_accum)):
            if self.steps_per_epoch is not None and index >= self.steps_per_epoch:
                return
            if index >= state.batches_in_epoch:
                yield group

    def evaluate(self) -> dict[str, float]:
        """Loss, perplexity and exact match on every eval set: ``eval/<set>/<metric>`` per named set, and
        ``eval_<metric>`` (what checkpoints rank on) from the held-out split, or the first named set without one."""
        t, metrics = self.cfg.train, {}
        for name, rows in self.eval_sets.items():
            result = evaluate(self.built.model, self.built.tokenizer, rows, seq_len=self.cfg.model.max_seq_len,
                              batch_size=t.micro_batch_size, max_new_tokens=t.eval_max_new_tokens,
                              generate_limit=t.eval_generate_limit, responses_only=t.train_on_responses_only,
                              rank=self.rank, world_size=self.world_size, synced=t.deepspeed.stage == 3)
            if "eval_loss" not in result:  # a metric over zero tokens is no number
                raise ConfigError(f"eval set {name or '(held-out split)'} has no answer token within "
                                  f"model.max_seq_len={self.cfg.model.max_seq_len}: raise model.max_seq_len")
            if name != HELD_OUT:
                metrics.update({f"eval/{name}/{k.removeprefix('eval_')}": v for k, v in result.items()})
            if "eval_loss" not in metrics:
                metrics.update(result)
        return metrics

    def after_step(self, state: TrainState, group: list[dict], start_step: int) -> None:
        """Test-only hooks: record the rows this rank trained on; spoil the model from a step on; the last rank
        SIGKILLs its own process (a real worker death, not an exception) on a run that started from scratch."""
        if self.test_hooks.get("row_log_dir"):
            path = Path(self.test_hooks["row_log_dir"]) / f"rank{self.rank}.jsonl"
            with path.open("a") as out:
                rows = [row for batch in group for block in batch["row_ids"] for row in block]
                out.write(json.dumps({"step": state.step, "rows": rows}) + "\n")
        if self.test_hooks.get("spoil_at_step") == state.step:
            spoil_from_here_on(self.built.model)
        if (self.test_hooks.get("kill_at_step") == state.step and start_step == 0
                and self.rank == self.world_size - 1):
            os.kill(os.getpid(), signal.SIGKILL)

    def announce(self, start_step: int) -> None:
        if self.is_main:
            where = f"resumed at step {start_step}" if start_step else "from scratch"
            cfg, built = self.cfg, self.built
            progress(f"{cfg.run_name}: {self.world_size} worker(s), ZeRO-{cfg.train.deepspeed.stage}, "
                     f"{cfg.adapter.label}, {built.trainable_params:,} of {built.total_params:,} "
                     f"params trainable, {self.total_steps} steps, {where}")


def spoil_from_here_on(model: torch.nn.Module) -> None:
    """Every later forward's logits multiplied by 1000 (a hook on the output layer): a model that is not right on
    every answer token is then confidently wrong, so each later eval loss is far above any before it."""
    model.get_output_embeddings().register_forward_hook(lambda _module, _inputs, logits: logits * 1000.0)


def non_empty(eval_sets: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The eval sets that hold rows (an empty held-out split is no set to evaluate)."""
    return {name: rows for name, rows in eval_sets.items() if rows}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker. ``loop_config`` is plain data: {"cfg", "base_path", "prepared_dir", "eval_paths",
    "eval_sets", "mlflow", "test_hooks"}."""
    import ray.train

    cfg = RayloraConfig.model_validate(loop_config["cfg"])
    quiet_libraries()
    if not cfg.cluster.use_gpu:
        torch.set_num_threads(worker_threads(cfg))
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    rows = PreparedRows.open(loop_config["prepared_dir"])
    per_epoch, total_steps = None, cfg.train.max_steps
    if total_steps is None:
        per_epoch = steps_per_epoch(rows, cfg, rank, world_size)
        total_steps = per_epoch * cfg.train.num_epochs

    built = build_engine(cfg, total_steps, loop_config["base_path"])
    if cfg.train.packing and not packing_isolates(built.model, built.tokenizer):
        cfg = without_packing(cfg, announce=rank == 0)
        if per_epoch is not None:  # an unpacked epoch holds more steps: recount, spread the schedule over them
            per_epoch = steps_per_epoch(rows, cfg, rank, world_size)
            total_steps = per_epoch * cfg.train.num_epochs
            stretch_schedule(built.engine, cfg, total_steps)
    worker = Worker(cfg=cfg, built=built, rows=rows,
                    rank=rank, world_size=world_size, steps_per_epoch=per_epoch, total_steps=total_steps,
                    eval_sets=non_empty({HELD_OUT: read_rows(loop_config["eval_paths"]), **loop_config["eval_sets"]}),
                    metrics_log=MetricLogger(**loop_config["mlflow"], rank=rank),
                    test_hooks=loop_config["test_hooks"])
    state = worker.resume()
    if state.step >= total_steps:  # a rerun of a finished run: nothing to train, report where it ended
        ray.train.report(state.metrics or {"step": state.step})
        return
    worker.announce(state.step)
    train_until_done(worker, state)
    worker.metrics_log.close()


def train_until_done(worker: Worker, state: TrainState) -> None:
    """Epoch after epoch until ``total_steps``: each step trains, logs, and maybe evaluates and checkpoints."""
    t, start_step = worker.cfg.train, state.step
    window = LogWindow()
    while state.step < worker.total_steps:
        fresh_epoch, produced = state.batches_in_epoch == 0, False
        steps = worker.epoch_steps(state)
        while True:
            with window.phases.timed("data"):
                group = next(steps, None)
            if group is None:
                break
            produced = True
            loss = train_step(worker.built.engine, group, window.phases)
            step_tokens = sum(int(b["input_ids"].numel()) for b in group)  # every position the model computed
            window.add(loss, step_tokens)
            state.step, state.batches_in_epoch, state.tokens = (state.step + 1, state.batches_in_epoch + 1,
                                                                state.tokens + step_tokens)
            with window.phases.timed("logging"):
                lr = worker.built.engine.get_lr()[0]
                loss_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in group)
                worker.metrics_log.log_dict({"train_loss": loss, "lr": lr, "loss_tokens": loss_tokens}, state.step)
                worker.after_step(state, group, start_step)

            last = state.step >= worker.total_steps
            if state.step % t.log_every == 0 or last:
                summary = window.close()
                state.metrics = {"step": state.step, "epoch": state.epoch, **summary, "lr": lr,
                                 "packing_efficiency": worker.packing.efficiency,
                                 **truncation_metrics(worker.packing),
                                 "peak_memory_mib": peak_memory_mib(worker.cfg.cluster.use_gpu),
                                 "threads": torch.get_num_threads(), "resumed_from_step": start_step}
                worker.metrics_log.log_dict({k: v for k, v in summary.items() if k != "train_loss"}, state.step)
                if worker.is_main:
                    progress(f"step {state.step}/{worker.total_steps} loss {state.metrics['train_loss']:.4f} "
                             f"lr {lr:.2e} {state.metrics['tokens_per_s_all_ranks']:.0f} tok/s")
                window.phases.add("logging", time.perf_counter() - window.started)  # the next window's
            checkpoint_now = state.step % t.checkpoint_every == 0 or last
            evaluate_now = t.eval and (state.step % t.eval_every == 0 or checkpoint_now)
            paused_at = time.perf_counter()
            if evaluate_now:
                evaluated = worker.evaluate()
                state.metrics = {**state.metrics, "step": state.step, **evaluated}
                worker.metrics_log.log_dict(evaluated, state.step)
                worker.metrics_log.flush()
                if worker.is_main:
                    progress(f"step {state.step} eval_loss {evaluated['eval_loss']:.4f}"
                             + (f" exact_match {evaluated['eval_exact_match']:.3f}"
                                if "eval_exact_match" in evaluated else ""))
            if checkpoint_now:
                worker.metrics_log.flush()  # the steps a checkpoint holds are in MLflow before a rerun resumes it
                report_checkpoint(worker.built.engine, state.metrics, state.to_dict(), worker.rank,
                                  full_model=worker.cfg.adapter.is_full)
            elif evaluate_now:
                import ray.train

                ray.train.report(state.metrics)
            if last:
                return
            window.pause(time.perf_counter() - paused_at)  # evaluation and checkpoints are not step time
        if fresh_epoch and not produced:
            raise ConfigError(f"rank {worker.rank} got no full batch from the train data: "
                              "lower train.micro_batch_size")
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
