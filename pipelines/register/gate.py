"""The promotion gate: does the challenger beat the champion, and does it hold every configured bound?

    decide({"eval_loss": 1.1}, {"eval_loss": 1.3}, cfg.register)   # -> GateDecision(promote=True, reason=...)

Both measurements come from the same fixed eval set with the same settings (``gate_set_key``); the caller
makes sure of that, re-measuring the champion when it was measured on another set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import RayloraConfig, RegisterConfig

SET_KEY_CHARS = 12


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate_set_key(cfg: RayloraConfig, eval_set_path: str | Path) -> str:
    """What makes two gate measurements comparable: the eval set's bytes and the settings that shape the
    metrics (sequence length, generated tokens, rows scored, loss on answers only)."""
    t = cfg.train
    settings = {"max_seq_len": cfg.model.max_seq_len, "eval_max_new_tokens": t.eval_max_new_tokens,
                "eval_generate_limit": t.eval_generate_limit, "responses_only": t.train_on_responses_only}
    digest = hashlib.sha256(Path(eval_set_path).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:SET_KEY_CHARS]


def failed_bounds(metrics: dict[str, float], register: RegisterConfig) -> list[str]:
    """Each configured gate the metrics miss, as ``eval_loss 2.3 > max 2.0``; a metric not measured misses."""
    misses = []
    for name, bounds in sorted(register.gates.items()):
        value = metrics.get(name)
        if value is None:
            misses.append(f"{name} was not measured")
        elif bounds.min is not None and value < bounds.min:
            misses.append(f"{name} {value:.4g} < min {bounds.min:g}")
        elif bounds.max is not None and value > bounds.max:
            misses.append(f"{name} {value:.4g} > max {bounds.max:g}")
    return misses


def decide(challenger: dict[str, float], champion: dict[str, float] | None, register: RegisterConfig,
           champion_version: str | None = None) -> GateDecision:
    """Promote when every gate holds and, against a champion, ``gate_metric`` improves by more than zero and by
    at least ``min_improvement`` (absolute, in the metric's units; lower is better under ``gate_mode: min``)."""
    misses = failed_bounds(challenger, register)
    if misses:
        return GateDecision(False, f"gates not met: {'; '.join(misses)}")
    metric = register.gate_metric
    if champion is None:
        return GateDecision(True, "first champion: every gate holds")
    if metric not in challenger or metric not in champion:
        return GateDecision(False, f"{metric} was not measured on both versions")
    ours, theirs = challenger[metric], champion[metric]
    improvement = theirs - ours if register.gate_mode == "min" else ours - theirs
    against = f"{metric} {ours:.4g} vs champion version {champion_version}'s {theirs:.4g}"
    if improvement > 0 and improvement >= register.min_improvement:
        return GateDecision(True, f"{against}: better by {improvement:.4g} (needs {register.min_improvement:g})")
    return GateDecision(False, f"{against}: improvement {improvement:.4g}, needs more than 0 and at least "
                               f"{register.min_improvement:g}")
