"""Lineage on every version: what the adapter is, what it was trained and measured on, with which code.

Tags (searchable in the registry) and files (``lineage/`` among the model's artifacts): the base model and
revision; the adapter's method, r, alpha, targets; the train and eval data hashes and the curation report;
the full resolved config; the tune trial; the eval metrics; raylora's and the libraries' versions; the git
commit when there is one.
"""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipelines.artifacts import DatasetManifest, TrainResult, TuneResult
from pipelines.config import RayloraConfig

LIBRARIES = ("raylora", "torch", "transformers", "peft", "mlflow", "ray", "deepspeed", "bitsandbytes")
REPO = Path(__file__).resolve().parents[2]
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    """The commit raylora runs from, when it runs from a git checkout."""
    if not (REPO / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def lineage_tags(trained: RayloraConfig, result: TrainResult, tune: TuneResult | None,
                 gate: dict[str, Any]) -> dict[str, str]:
    adapter = trained.adapter
    tags = {
        "base_model": trained.model.base,
        "base_revision": str(trained.model.revision),
        "adapter.method": adapter.method,
        "adapter.r": str(adapter.r),
        "adapter.alpha": str(adapter.lora_alpha),
        "adapter.targets": json.dumps(adapter.target_modules),
        "data.train_hash": result.train_hash,
        "data.eval_hash": result.eval_hash,
        "train.run_name": result.run_name,
        "train.fingerprint": result.fingerprint,
        "train.mlflow_run_id": str(result.mlflow_run_id),
        "tune.trial_id": str(tune.best_trial.get("trial_id")) if tune else "none (a single train run)",
        "tune.mlflow_run_id": tune.mlflow_run_id if tune else "none",
        "gate.eval_set": gate["eval_set"],
        "gate.set_key": gate["set_key"],
        **{f"gate.{k}": f"{v:.6g}" for k, v in gate["metrics"].items()},
        **{f"train.{k}": f"{v:.6g}" for k, v in result.metrics.items() if k.startswith(("eval", "exported"))},
        **{f"version.{k}": v for k, v in library_versions().items()},
        "git.commit": git_commit() or "none",
    }
    return {k: v[:MAX_TAG_CHARS] for k, v in tags.items()}


def write_lineage_files(out: Path, cfg: RayloraConfig, result: TrainResult, tune: TuneResult | None,
                        curation: DatasetManifest | None, gate: dict[str, Any]) -> Path:
    """``out`` filled with resolved_config.json (the training run's), register_config.json, train_result.json,
    tune_result.json, curation_report.json (when the curated data still matches the adapter's) and gate.json."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {
        "resolved_config.json": result.config,
        "register_config.json": cfg.public_dump(),
        "train_result.json": result.to_dict(),
        "gate.json": gate,
        "versions.json": {"libraries": library_versions(), "git_commit": git_commit()},
    }
    if tune is not None:
        files["tune_result.json"] = tune.to_dict()
    if curation is not None:
        files["curation_report.json"] = curation.to_dict()
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")
    return out
