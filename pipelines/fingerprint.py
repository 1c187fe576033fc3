"""A run's fingerprint: a hash of everything that shapes its result, so a rerun never pretends.

    raylora train configs/demo.yaml                 # same fingerprint as the last run: resume or report it
    raylora train configs/demo.yaml train.lr=1e-4   # a new fingerprint: a new run, one line says what changed

Inputs are flattened to ``{"train.lr": "0.001", ...}``: the resolved config less the keys that do not change
the trained adapter (logging and eval cadence, where the run is tracked and which cluster it runs on), plus the
train and eval data hashes. ``cluster.num_workers`` stays in: it sets the effective batch. Curation has its
own: the keys that shape its output plus the content of every file it reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import RayloraConfig

FINGERPRINT_CHARS = 12
# sections and keys that never change what a run trains (prefixes of the flattened keys)
RESULT_NEUTRAL = ("run_name", "workdir", "data.", "curate.", "tune.", "register.", "tracking.", "cluster.",
                  "train.log_every", "train.eval_every", "train.eval_max_new_tokens", "train.eval_generate_limit",
                  "train.keep_checkpoints", "model.config_file")
RESULT_SHAPING_CLUSTER_KEYS = ("cluster.num_workers", "cluster.use_gpu")
# what shapes curation's output: its own sections, the seed of its picks and split, and the tokenizer it counts with
CURATE_SHAPING = ("data.", "curate.", "seed", "model.base", "model.revision", "model.max_seq_len",
                  "model.chat_template", "model.trust_remote_code")
CURATE_NEUTRAL = ("curate.output_dir",)
LAST_RUN_FILE = "last_run.json"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class Fingerprint:
    """The inputs that shape a run, and their hash."""

    inputs: dict[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps(self.inputs, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]

    def changes_since(self, earlier: Fingerprint) -> list[str]:
        """``key: old -> new`` for every input that differs, sorted by key."""
        keys = sorted(set(self.inputs) | set(earlier.inputs))
        return [f"{k}: {earlier.inputs.get(k, '(unset)')} -> {self.inputs.get(k, '(unset)')}" for k in keys
                if earlier.inputs.get(k) != self.inputs.get(k)]


def train_fingerprint(cfg: RayloraConfig, data_hashes: Mapping[str, str]) -> Fingerprint:
    """The train stage's fingerprint: result-shaping config keys plus the data hashes (e.g. train, eval)."""
    flat = flatten(cfg.model_dump(mode="json"))
    inputs = {k: v for k, v in flat.items()
              if k in RESULT_SHAPING_CLUSTER_KEYS or not k.startswith(RESULT_NEUTRAL)}
    inputs.update({f"data_hash.{name}": value for name, value in data_hashes.items()})
    return Fingerprint(inputs)


def curate_fingerprint(cfg: RayloraConfig, file_digests: Mapping[str, str]) -> Fingerprint:
    """Curation's fingerprint: the config keys that shape its output plus a digest of every input file's
    content (the sources and the eval sets it decontaminates against)."""
    flat = flatten(cfg.model_dump(mode="json"))
    inputs = {k: v for k, v in flat.items() if k.startswith(CURATE_SHAPING) and not k.startswith(CURATE_NEUTRAL)}
    inputs.update({f"file.{path}": digest for path, digest in file_digests.items()})
    return Fingerprint(inputs)


def record_last_run(name_dir: Path, fingerprint: Fingerprint) -> str | None:
    """Remember ``fingerprint`` as the latest run under ``name_dir``; returns one line saying what changed
    since the run recorded before it (None for a first run or the same fingerprint)."""
    path = name_dir / LAST_RUN_FILE
    line = None
    if path.is_file():
        earlier = Fingerprint(json.loads(path.read_text())["inputs"])
        if earlier.digest != fingerprint.digest:
            changes = fingerprint.changes_since(earlier)
            line = (f"config changed since run {earlier.digest} ({'; '.join(changes)}): new run "
                    f"{fingerprint.digest}, the old run is kept")
    name_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint.digest, "inputs": fingerprint.inputs}, indent=2,
                               sort_keys=True, default=str))
    return line
