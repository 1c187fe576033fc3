"""Checkpoints: adapter-only DeepSpeed state plus the data position, reported to Ray Train.

A checkpoint directory holds the DeepSpeed tag ``state`` (trainable weights, optimizer, schedule; the frozen
base excluded), one ``train_state.rank<N>.json`` per rank (where that rank is: ranks can be in different
places of their shards) and ``adapter/`` in PEFT format, which the driver exports as the run's adapter. Ray
Train gathers every rank's files into the one checkpoint directory. Under full fine-tuning
(``adapter.method: full``) nothing is frozen, so ``state`` holds every weight, and ``adapter/`` holds the
whole model as ``save_pretrained`` writes it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT_TAG = "state"  # the DeepSpeed tag inside every Ray checkpoint directory
ADAPTER_DIR = "adapter"


def train_state_file(rank: int) -> str:
    return f"train_state.rank{rank}.json"


def save_checkpoint(engine: Any, out_dir: Path, state: dict[str, Any], rank: int, full_model: bool) -> None:
    """Every rank calls it (ZeRO shards are per rank) and writes its own train state; rank 0 the adapter, or the
    whole model when ``full_model`` (full fine-tuning)."""
    from adapters.io import save_adapter, save_full_model

    engine.save_checkpoint(str(out_dir), tag=CHECKPOINT_TAG, exclude_frozen_parameters=True)
    save_trained = save_full_model if full_model else save_adapter
    save_trained(engine.module, out_dir / ADAPTER_DIR, is_main_process=rank == 0)
    (out_dir / train_state_file(rank)).write_text(json.dumps(state, indent=2))


def latest_checkpoint_step(run_storage: Path) -> int | None:
    """The step of the newest checkpoint Ray Train keeps under ``run_storage`` (None before the first)."""
    steps = [json.loads(path.read_text()).get("step") for path in run_storage.glob(f"checkpoint_*/{train_state_file(0)}")]
    return max((step for step in steps if isinstance(step, int)), default=None)


def load_checkpoint(engine: Any, ckpt_dir: Path, rank: int) -> dict[str, Any]:
    """Restore the engine from ``ckpt_dir``; returns this rank's saved train state."""
    engine.load_checkpoint(str(ckpt_dir), tag=CHECKPOINT_TAG, load_module_strict=False,
                           load_optimizer_states=True, load_lr_scheduler_states=True)
    return json.loads((ckpt_dir / train_state_file(rank)).read_text())


def report_checkpoint(engine: Any, metrics: dict[str, float], state: dict[str, Any], rank: int,
                      full_model: bool) -> None:
    """Save a checkpoint and report it with ``metrics`` to Ray Train, then wait until it is committed."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="raylora-ckpt-") as tmp:
        save_checkpoint(engine, Path(tmp), state, rank, full_model)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    # Ray Train registers a report (and writes the run snapshot a rerun resumes from) when its controller
    # next polls; wait for that, so a run that dies right after a checkpoint still resumes from it
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
