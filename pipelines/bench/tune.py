"""Benchmark of the tune stage: the same 12-point grid over r x lr, once run to completion (FIFO) and once
with ASHA stopping weak trials, side by side in one run.

    raylora bench tune configs/demo.yaml
    raylora bench tune configs/demo.yaml train.max_steps=60 train.eval_every=10 tune.reduction_factor=3

Prints each search's total trial-steps, best eval loss and wall time, and the aim: ASHA within 2% of the
grid's best eval loss with at most 35% of its trial-steps. Needs the curated dataset (``raylora curate``).
"""

from __future__ import annotations

import time

from pipelines.artifacts import read_curated_manifest
from pipelines.config import RayloraConfig
from pipelines.tune import tune

GRID = {"adapter.r": {"grid": [4, 8, 16]}, "train.lr": {"grid": [1e-4, 3e-4, 1e-3, 3e-3]}}
AIM_LOSS_GAP, AIM_STEP_SHARE = 0.02, 0.35


def bench_tune(cfg: RayloraConfig, config_path: str) -> str:
    manifest = read_curated_manifest(cfg, config_path)
    rows = {}
    for scheduler in ("fifo", "asha"):
        search_cfg = cfg.model_copy(update={
            "run_name": f"{cfg.run_name}-bench-{scheduler}",
            "tune": cfg.tune.model_copy(update={"search": "grid", "search_space": GRID, "num_samples": 1,
                                                "scheduler": scheduler, "metric": "eval_loss", "mode": "min"})})
        started = time.perf_counter()
        result = tune(search_cfg, manifest)
        rows[scheduler] = {"trial_steps": sum(t["steps"] for t in result.trials),
                           "best": result.best_trial["metrics"]["eval_loss"],
                           "stopped": sum(t["stopped_early"] for t in result.trials),
                           "wall_s": time.perf_counter() - started}
    grid, asha = rows["fifo"], rows["asha"]
    gap = (asha["best"] - grid["best"]) / grid["best"]
    share = asha["trial_steps"] / grid["trial_steps"]
    lines = [f"tune bench: 12-point grid {GRID}, {cfg.train.max_steps} steps, eval every {cfg.train.eval_every}",
             f"  {'search':<8} {'trial-steps':>11} {'stopped':>8} {'best eval_loss':>15} {'wall s':>8}"]
    for name, row in (("grid", grid), ("asha", asha)):
        lines.append(f"  {name:<8} {row['trial_steps']:>11} {row['stopped']:>8} {row['best']:>15.4f} "
                     f"{row['wall_s']:>8.0f}")
    lines.append(f"  ASHA best vs grid best: {gap:+.2%} (aim <= +{AIM_LOSS_GAP:.0%}); trial-steps {share:.0%} of the "
                 f"grid's (aim <= {AIM_STEP_SHARE:.0%}): "
                 + ("met" if gap <= AIM_LOSS_GAP and share <= AIM_STEP_SHARE else "NOT met"))
    return "\n".join(lines)
