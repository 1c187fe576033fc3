"""Checkpoints: adapter-only DeepSpeed state plus the data position, reported to Ray Train.

A checkpoint directory holds the DeepSpeed tag ``state`` (trainable weights, optimizer, schedule; the frozen
base excluded), ``train_state.json`` (where the run is) and ``adapter/`` in PEFT format, which the driver
exports as the run's adapter.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT_TAG = "state"  # the DeepSpeed tag inside every Ray checkpoint directory
TRAIN_STATE_FILE = "train_state.json"
ADAPTER_DIR = "adapter"


def save_checkpoint(engine: Any, out_dir: Path, state: dict[str, Any], is_main: bool) -> None:
    """Every rank calls it (ZeRO shards are per rank); rank 0 also writes the adapter and the train state."""
    from adapters.io import save_adapter

    engine.save_checkpoint(str(out_dir), tag=CHECKPOINT_TAG, exclude_frozen_parameters=True)
    save_adapter(engine.module, out_dir / ADAPTER_DIR, is_main_process=is_main)
    if is_main:
        (out_dir / TRAIN_STATE_FILE).write_text(json.dumps(state, indent=2))


def load_checkpoint(engine: Any, ckpt_dir: Path) -> dict[str, Any]:
    """Restore the engine from ``ckpt_dir``; returns the saved train state."""
    engine.load_checkpoint(str(ckpt_dir), tag=CHECKPOINT_TAG, load_module_strict=False,
                           load_optimizer_states=True, load_lr_scheduler_states=True)
    return json.loads((ckpt_dir / TRAIN_STATE_FILE).read_text())


def report_checkpoint(engine: Any, metrics: dict[str, float], state: dict[str, Any], is_main: bool) -> None:
    """Save a checkpoint and report it with ``metrics`` to Ray Train, then wait until it is committed."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="raylora-ckpt-") as tmp:
        save_checkpoint(engine, Path(tmp), state, is_main)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    # Ray Train registers a report (and writes the run snapshot a rerun resumes from) when its controller
    # next polls; wait for that, so a run that dies right after a checkpoint still resumes from it
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
