"""The train stage: adapters on a frozen base, trained on Ray Train with DeepSpeed ZeRO, fed by Ray Data.

    raylora train configs/demo.yaml                          # reads <workdir>/curated/manifest.json
    raylora train configs/demo.yaml cluster.num_workers=2 train.deepspeed.stage=3 adapter.method=dora

``train(cfg, manifest) -> TrainResult`` checks its inputs (before any worker starts), opens an MLflow run,
and runs a ``TorchTrainer`` whose workers call ``train_loop_per_worker``. Metrics leave the workers only
through ``ray.train.report`` (so Ray Tune can wrap ``train``); rank 0 also logs each step to MLflow.

The per-worker pieces are plain functions that run without Ray (for a GPU box without Ray, or a test):
``build_engine`` (model + DeepSpeed engine + optimizer + schedule), ``train_batches`` (one epoch of packed
micro-batches, in pipelines.train.data), ``train_step`` and ``evaluate``.

A rerun with the same ``run_name`` resumes: Ray Train finds the run's snapshot under the storage path and
hands the workers its latest checkpoint (adapter weights, optimizer, schedule, step and data position).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.runtime_env import ensure_ray
from pipelines.artifacts import DatasetManifest, TrainResult
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError, StageError
from pipelines.models import resolve_base_model
from pipelines.train.data import (
    IGNORE_INDEX,
    PackingStats,
    pack_examples,
    prefetch,
    tokenize_chat,
    train_batches,
)

CHECKPOINT_TAG = "state"  # the DeepSpeed tag inside every Ray checkpoint directory
TRAIN_STATE_FILE = "train_state.json"
ADAPTER_DIR = "adapter"
# Test-only fault injection: the last rank SIGKILLs its own process at this optimizer step, on a run that
# started from scratch (a resumed run never kills itself again). Read by the driver, passed to the workers.
FAULT_KILL_ENV = "RAYLORA_FAULT_KILL_AT_STEP"

log = logging.getLogger("raylora.train")


# ---------------------------------------------------------------- checks before any worker starts


def check_inputs(cfg: RayloraConfig, manifest: DatasetManifest, base_path: str) -> None:
    """Fail before Ray starts workers: missing data files, a sequence length the model cannot hold, a bad
    DeepSpeed file. Each message names the fix."""
    missing = [p for p in [*manifest.train_paths, *manifest.eval_paths] if not Path(p).exists()]
    if missing:
        raise StageError(
            f"the dataset manifest points at {len(missing)} missing file(s), e.g. {missing[0]}: "
            "rerun `raylora curate CONFIG` to write them again"
        )
    if not manifest.train_paths:
        raise StageError("the dataset manifest has no train files: rerun `raylora curate CONFIG`")
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(base_path, revision=cfg.model.revision,
                                              trust_remote_code=cfg.model.trust_remote_code)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and cfg.model.max_seq_len > limit:
        raise ConfigError(
            f"model.max_seq_len={cfg.model.max_seq_len} is longer than the model supports "
            f"({limit} positions): set model.max_seq_len={limit} or less"
        )
    if cfg.train.deepspeed.config_file:
        deepspeed_config(cfg)  # reads and checks the file


# ---------------------------------------------------------------- DeepSpeed engine, optimizer, schedule


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


def build_engine(cfg: RayloraConfig, total_steps: int) -> Engine:
    """Model through ``adapters`` -> DeepSpeed engine with the configured ZeRO stage, optimizer and schedule.

    torch.distributed must be initialised (Ray Train does it; without Ray, ``init_process_group``)."""
    use_cpu_accelerator(cfg)
    quiet_libraries()
    import deepspeed

    from adapters.build import build_model

    deepspeed.init_distributed(dist_backend="nccl" if cfg.cluster.use_gpu else "gloo")
    torch.manual_seed(cfg.train.seed)
    built = build_model(cfg.model.model_copy(update={"base": resolve_base_model(cfg.model.base)}), cfg.adapter)
    params = [p for p in built.model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    warmup = math.ceil(cfg.train.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.train.scheduler, warmup, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=built.model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(cfg), dist_init_required=False)
    return Engine(engine=engine, tokenizer=built.tokenizer, trainable_params=built.trainable_params,
                  total_params=built.total_params)


def train_step(engine: Any, micro_batches: list[dict[str, torch.Tensor]]) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss.

    No attention mask: with position ids that restart per packed example, transformers masks attention
    block-diagonally, so packed examples never see each other."""
    engine.train()
    total = 0.0
    for batch in micro_batches:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        loss = engine(**batch, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        total += loss.item()
    return total / len(micro_batches)


# ---------------------------------------------------------------- evaluation


def _dist_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def _rank_chunks(rows: list[dict], rank: int, world_size: int, batch_size: int) -> list[tuple[list[dict], float]]:
    """This rank's share of ``rows`` in batches, padded with zero-weight repeats so that every rank runs the
    same number of forward passes (ZeRO-3 gathers parameters collectively on every forward)."""
    mine = rows[rank::world_size]
    per_rank = math.ceil(math.ceil(len(rows) / world_size) / batch_size)
    chunks = [(mine[i:i + batch_size], 1.0) for i in range(0, len(mine), batch_size)]
    filler = rows[:batch_size]
    return chunks + [(filler, 0.0)] * (per_rank - len(chunks))


def answer_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """Split a conversation into the prompt (everything before the last assistant turn) and that answer."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def evaluate(model: torch.nn.Module, tokenizer: Any, rows: list[dict], *, seq_len: int, batch_size: int,
             max_new_tokens: int, generate_limit: int | None, responses_only: bool = True, rank: int = 0,
             world_size: int = 1, synced: bool = False) -> dict[str, float]:
    """Eval loss and perplexity over ``rows``, and greedy exact-match accuracy over the first
    ``generate_limit`` rows (the generated answer against the last assistant message). Every rank takes a
    share; the sums are all-reduced. ``synced`` keeps ranks in step while generating (ZeRO-3)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    loss_sum, token_count = 0.0, 0.0
    with torch.no_grad():
        for chunk, weight in _rank_chunks(rows, rank, world_size, batch_size):
            examples = [tokenize_chat(r["messages"], tokenizer, responses_only) for r in chunk]
            longest = min(seq_len, max(len(e.input_ids) for e in examples))
            blocks = list(pack_examples(examples, longest, pad_id, packing=False))
            labels = torch.tensor([b.labels for b in blocks], device=device)
            logits = model(input_ids=torch.tensor([b.input_ids for b in blocks], device=device),
                           position_ids=torch.tensor([b.position_ids for b in blocks], device=device),
                           use_cache=False).logits
            shifted = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted,
                                                       ignore_index=IGNORE_INDEX, reduction="sum")
            loss_sum += weight * losses.item()
            token_count += weight * (shifted != IGNORE_INDEX).sum().item()
        scored_rows = rows if generate_limit is None else rows[:generate_limit]
        correct, scored = (_exact_match(model, tokenizer, scored_rows, batch_size, max_new_tokens, rank,
                                        world_size, synced) if scored_rows else (0.0, 0.0))
    loss_sum, token_count, correct, scored = _dist_sum([loss_sum, token_count, correct, scored])
    model.train(was_training)
    eval_loss = loss_sum / max(token_count, 1.0)
    return {"eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50.0)),
            "eval_exact_match": correct / max(scored, 1.0)}


def _exact_match(model: torch.nn.Module, tokenizer: Any, rows: list[dict], batch_size: int, max_new_tokens: int,
                 rank: int, world_size: int, synced: bool) -> tuple[float, float]:
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    correct, scored = 0.0, 0.0
    for chunk, weight in _rank_chunks(rows, rank, world_size, batch_size):
        prompts, answers = zip(*(answer_prompt(r["messages"]) for r in chunk), strict=True)
        texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        generated = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += weight * sum(g.strip() == a.strip() for g, a in zip(generated, answers, strict=True))
        scored += weight * len(chunk)
    return correct, scored


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(engine: Any, out_dir: Path, state: dict[str, Any], is_main: bool) -> None:
    """Adapter-only: trainable weights + optimizer + schedule (DeepSpeed, frozen base excluded), the data
    position, and the adapter in PEFT format. Every rank calls it (ZeRO shards are per rank)."""
    from adapters.io import save_adapter

    engine.save_checkpoint(str(out_dir), tag=CHECKPOINT_TAG, exclude_frozen_parameters=True)
    save_adapter(engine.module, out_dir / ADAPTER_DIR, is_main_process=is_main)
    if is_main:
        (out_dir / TRAIN_STATE_FILE).write_text(json.dumps(state, indent=2))


def load_checkpoint(engine: Any, ckpt_dir: Path) -> dict[str, Any]:
    engine.load_checkpoint(str(ckpt_dir), tag=CHECKPOINT_TAG, load_module_strict=False,
                           load_optimizer_states=True, load_lr_scheduler_states=True)
    return json.loads((ckpt_dir / TRAIN_STATE_FILE).read_text())


# ---------------------------------------------------------------- the per-worker loop


def peak_memory_mib(use_gpu: bool) -> float:
    if use_gpu and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def read_rows(paths: list[str]) -> list[dict]:
    """The (id, messages) rows of curated Parquet files, in order."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in paths:
        rows += pq.read_table(path, columns=["id", "messages"]).to_pylist()
    return rows


def steps_per_epoch(rows: Iterable[dict], tokenizer: Any, cfg: RayloraConfig, rank: int, world_size: int) -> int:
    """Optimizer steps in one epoch of this rank's shard, agreed on by every rank (the minimum), so that
    all ranks stop each epoch together. A counting pass: tokenising is cheap next to training."""
    import torch.distributed as dist

    n = sum(1 for _ in train_batches(rows, tokenizer, seq_len=cfg.model.max_seq_len,
                                     micro_batch_size=cfg.train.micro_batch_size, rank=rank, world_size=world_size,
                                     seed=cfg.train.seed, packing=cfg.train.packing,
                                     responses_only=cfg.train.train_on_responses_only))
    count = torch.tensor([n // cfg.train.grad_accum])
    if dist.is_initialized() and world_size > 1:
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
    if count.item() == 0:
        raise StageError(f"rank {rank} has too little data for one step: lower train.micro_batch_size or "
                         "train.grad_accum, or use fewer cluster.num_workers")
    return int(count.item())


def _grouped(batches: Iterator[dict[str, torch.Tensor]], size: int) -> Iterator[list[dict[str, torch.Tensor]]]:
    group: list[dict[str, torch.Tensor]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


class MlflowStepLogger:
    """Rank 0 logs per-step metrics to the driver's MLflow run, in batches to keep the store fast."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, every: int = 10) -> None:
        self.client = None
        if tracking_uri and run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri)
        self.run_id, self.every, self.pending = run_id, every, []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self.pending) >= self.every * len(metrics):
            self.flush()

    def flush(self) -> None:
        if self.client is not None and self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []


def progress(message: str) -> None:
    """Rank 0's progress line. Through a logger, not print: Ray Train patches print to log *and* echo it,
    which shows every line twice."""
    log.info("[raylora train] %s", message)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: build the engine, resume from the latest checkpoint, stream the train shard,
    evaluate, checkpoint and report. ``loop_config`` is plain data: {"cfg", "eval_paths", "mlflow", ...}."""
    import ray.train

    cfg = RayloraConfig.model_validate(loop_config["cfg"])
    quiet_libraries()
    log.setLevel(logging.INFO)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    is_main = rank == 0
    shard = ray.train.get_dataset_shard("train")
    if cfg.train.max_steps is None:
        from adapters.build import load_tokenizer

        counting_tokenizer = load_tokenizer(cfg.model.model_copy(update={"base": resolve_base_model(cfg.model.base)}))
        per_epoch = steps_per_epoch(shard.iter_rows(), counting_tokenizer, cfg, rank, world_size)
        total_steps = per_epoch * cfg.train.num_epochs
    else:
        per_epoch, total_steps = None, cfg.train.max_steps

    built = build_engine(cfg, total_steps)
    engine, tokenizer = built.engine, built.tokenizer
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "tokens": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(engine, Path(ckpt_dir))
    start_step = state["step"]
    if start_step >= total_steps:  # a rerun of a finished run: nothing to train, report where it ended
        ray.train.report(state.get("metrics", {"step": start_step}))
        return
    if is_main:
        where = f"resumed at step {start_step}" if start_step else "from scratch"
        progress(f"{cfg.run_name}: {world_size} worker(s), ZeRO-{cfg.train.deepspeed.stage}, "
              f"{cfg.adapter.method} r={cfg.adapter.r}, {built.trainable_params:,} of {built.total_params:,} "
              f"params trainable, {total_steps} steps, {where}")

    eval_rows = read_rows(loop_config["eval_paths"])
    mlflow_log = MlflowStepLogger(**loop_config["mlflow"]) if is_main else MlflowStepLogger(None, None)
    kill_at = loop_config.get("fault_kill_at_step")
    stats = PackingStats()
    t = cfg.train

    def run_eval() -> dict[str, float]:
        return evaluate(engine.module, tokenizer, eval_rows, seq_len=cfg.model.max_seq_len,
                        batch_size=t.micro_batch_size, max_new_tokens=t.eval_max_new_tokens,
                        generate_limit=t.eval_generate_limit, responses_only=t.train_on_responses_only,
                        rank=rank, world_size=world_size, synced=cfg.train.deepspeed.stage == 3)

    def epoch_groups(epoch: int, skip: int) -> Iterator[list[dict[str, torch.Tensor]]]:
        batches = train_batches(shard.iter_rows(), tokenizer, seq_len=cfg.model.max_seq_len,
                                micro_batch_size=t.micro_batch_size, rank=rank, world_size=world_size,
                                seed=t.seed + epoch, packing=t.packing, responses_only=t.train_on_responses_only,
                                stats=stats)
        for index, group in enumerate(_grouped(prefetch(batches), t.grad_accum)):
            if per_epoch is not None and index >= per_epoch:
                return
            if index >= skip:  # a resumed run skips what the checkpoint already trained on
                yield group

    # throughput counts the data feed and the step, not eval or checkpoint time: the clock runs from the end
    # of one step's bookkeeping to the end of the next step
    step, tokens_seen, window_tokens, window_seconds = start_step, 0, 0, 0.0
    clock = time.perf_counter()
    losses: list[float] = []
    metrics: dict[str, float] = {}
    epoch, skip = state["epoch"], state["batches_in_epoch"]
    while step < total_steps:
        fresh_epoch, produced = skip == 0, False
        for group in epoch_groups(epoch, skip):
            produced = True
            loss = train_step(engine, group)
            window_seconds += time.perf_counter() - clock
            step += 1
            skip += 1
            step_tokens = sum(int(b["input_ids"].numel()) for b in group)  # every position the model computed
            tokens_seen += step_tokens
            window_tokens += step_tokens
            losses.append(loss)
            lr = engine.get_lr()[0]
            if is_main:
                loss_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in group)
                mlflow_log.log(step, {"train_loss": loss, "lr": lr, "loss_tokens": loss_tokens})
            if kill_at is not None and step == kill_at and start_step == 0 and rank == world_size - 1:
                os.kill(os.getpid(), signal.SIGKILL)  # test-only: a real worker death, not an exception
            last = step >= total_steps
            if step % t.log_every == 0 or last:
                metrics = {"step": step, "epoch": epoch, "train_loss": sum(losses) / len(losses), "lr": lr,
                           "tokens_per_s": window_tokens / max(window_seconds, 1e-9),
                           "packing_efficiency": stats.efficiency, "peak_memory_mib": peak_memory_mib(cfg.cluster.use_gpu),
                           "resumed_from_step": start_step}
                losses, window_tokens, window_seconds = [], 0, 0.0
                if is_main:
                    mlflow_log.log(step, {"tokens_per_s": metrics["tokens_per_s"]})
                    progress(f"step {step}/{total_steps} loss {metrics['train_loss']:.4f} "
                          f"lr {lr:.2e} {metrics['tokens_per_s']:.0f} tok/s")
            do_eval = step % t.eval_every == 0 or step % t.checkpoint_every == 0 or last
            if do_eval:
                metrics = {**metrics, "step": step, **run_eval()}
                if is_main:
                    mlflow_log.log(step, {k: metrics[k] for k in ("eval_loss", "eval_perplexity", "eval_exact_match")})
                    progress(f"step {step} eval_loss {metrics['eval_loss']:.4f} "
                          f"exact_match {metrics['eval_exact_match']:.3f}")
                mlflow_log.flush()
            if step % t.checkpoint_every == 0 or last:
                _report_checkpoint(engine, metrics, {"step": step, "epoch": epoch, "batches_in_epoch": skip,
                                                     "tokens": state["tokens"] + tokens_seen, "metrics": metrics},
                                   is_main)
            elif do_eval:
                ray.train.report(metrics)
            if last:
                break
            clock = time.perf_counter()
        if fresh_epoch and not produced:
            raise StageError(f"rank {rank} got no full batch from the train data: lower train.micro_batch_size")
        epoch, skip = epoch + 1, 0
    mlflow_log.flush()


def _report_checkpoint(engine: Any, metrics: dict[str, float], state: dict[str, Any], is_main: bool) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="raylora-ckpt-") as tmp:
        save_checkpoint(engine, Path(tmp), state, is_main)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    # Ray Train registers a report (and writes the run snapshot a rerun resumes from) when its controller
    # next polls; wait for that, so a run that dies right after a checkpoint still resumes from it
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


# ---------------------------------------------------------------- the driver


def _flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_params(value, name + "."))
        else:
            out[name] = str(value)[:500]
    return out


def _open_mlflow_run(cfg: RayloraConfig, manifest: DatasetManifest) -> str:
    """The run's MLflow run: an unfinished one with the same run name is continued (a resumed run)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    unfinished = client.search_runs(
        [experiment_id], filter_string=f"tags.`raylora.run_name` = '{cfg.run_name}' and attributes.status != 'FINISHED'",
        max_results=1)
    if unfinished:
        return unfinished[0].info.run_id
    run = client.create_run(experiment_id, run_name=cfg.run_name, tags={
        "raylora.run_name": cfg.run_name, "raylora.stage": "train", "dataset_hash": manifest.content_hash,
        "base_model": cfg.model.base, "adapter_method": cfg.adapter.method,
    })
    params = _flat_params({k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("tune", "register")})
    items = list(params.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    return run.info.run_id


def train(cfg: RayloraConfig, manifest: DatasetManifest, callbacks: list | None = None) -> TrainResult:
    """Train the adapter on Ray Train + DeepSpeed; returns the TrainResult (also written as JSON).

    Called by ``raylora train`` and by Ray Tune trials; every metric also goes through ``ray.train.report``.
    ``callbacks`` go to ``RunConfig(callbacks=...)``: a Tune trial passes Ray's ``TuneReportCallback`` so the
    workers' reports reach the trial."""
    base_path = resolve_base_model(cfg.model.base)
    check_inputs(cfg, manifest, base_path)
    ensure_ray(cfg, log_to_driver=True)
    import ray

    workers_cpu = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker
    cluster_cpu = ray.cluster_resources().get("CPU", 0.0)
    if cluster_cpu - workers_cpu < 1.0:  # Ray Data's read tasks need a CPU beside the training workers
        raise ConfigError(
            f"{cfg.cluster.num_workers} worker(s) x {cfg.cluster.cpus_per_worker} CPU leave no CPU for the Ray Data "
            f"feed on this {cluster_cpu:g}-CPU cluster: set cluster.cpus_per_worker="
            f"{max(cluster_cpu - 1.0, 0.0) / cfg.cluster.num_workers:g} or fewer cluster.num_workers"
        )
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = cfg.path("train", cfg.run_name).resolve()
    storage = Path(cfg.cluster.storage_path or cfg.path("ray_results")).resolve()
    mlflow_run_id = _open_mlflow_run(cfg, manifest)

    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True  # a resumed run must see the rows in the same order
    data_context.enable_progress_bars = False
    train_data = ray.data.read_parquet(manifest.train_paths, columns=["id", "messages"])

    worker_env = {"TOKENIZERS_PARALLELISM": "false"}
    if not cfg.cluster.use_gpu:
        worker_env["DS_ACCELERATOR"] = "cpu"
    fault_kill = os.environ.get(FAULT_KILL_ENV)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "eval_paths": [str(Path(p).resolve()) for p in manifest.eval_paths],
            "mlflow": {"tracking_uri": cfg.tracking_uri, "run_id": mlflow_run_id},
            "fault_kill_at_step": int(fault_kill) if fault_kill else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker,
                                  **({"GPU": cfg.cluster.gpus_per_worker} if cfg.cluster.use_gpu else {})},
            placement_strategy=cfg.cluster.placement_strategy,
        ),
        # every worker reads the whole stream and keeps its rows by id hash: a deterministic shard, so a
        # resumed run skips exactly the batches it already trained on
        dataset_config=DataConfig(datasets_to_split=[]),
        datasets={"train": train_data},
        run_config=RunConfig(
            name=cfg.run_name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute="eval_loss", checkpoint_score_order="min"),
            worker_runtime_env={"env_vars": worker_env},
            callbacks=callbacks,
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:
        _end_mlflow_run(cfg, mlflow_run_id, "FAILED")
        raise StageError(f"training run {cfg.run_name} failed: {err}") from err
    if result.checkpoint is None:
        raise StageError(f"training run {cfg.run_name} reported no checkpoint")
    adapter_path = run_dir / ADAPTER_DIR
    with result.checkpoint.as_directory() as ckpt_dir:
        if adapter_path.exists():
            shutil.rmtree(adapter_path)
        shutil.copytree(Path(ckpt_dir) / ADAPTER_DIR, adapter_path)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    best = result.get_best_checkpoint(metric="eval_loss", mode="min") or result.checkpoint
    _finish_mlflow_run(cfg, mlflow_run_id, metrics, adapter_path)
    train_result = TrainResult(
        run_name=cfg.run_name, adapter_path=str(adapter_path), base_model=cfg.model.base, metrics=metrics,
        checkpoint_path=best.path, mlflow_run_id=mlflow_run_id, dataset_hash=manifest.content_hash,
        config=cfg.model_dump(mode="json"),
    )
    train_result.write(run_dir / "train_result.json")
    return train_result


def _end_mlflow_run(cfg: RayloraConfig, run_id: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(cfg.tracking_uri).set_terminated(run_id, status=status)


def _finish_mlflow_run(cfg: RayloraConfig, run_id: str, metrics: dict[str, float], adapter_path: Path) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    now, step = int(time.time() * 1000), int(metrics.get("step", 0))
    client.log_batch(run_id, metrics=[Metric(f"final_{k}", v, now, step) for k, v in metrics.items()])
    client.log_artifacts(run_id, str(adapter_path), artifact_path="adapter")
    client.set_terminated(run_id, status="FINISHED")
