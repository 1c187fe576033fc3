"""The artifacts that pass between stages: small frozen dataclasses written as JSON next to the data.

Stages never import each other; each reads the artifact of the stage before it:
curate -> DatasetManifest, tune -> TuneResult, train -> TrainResult, register -> Registration.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.errors import StageError

if TYPE_CHECKING:
    from pipelines.config import RayloraConfig

ARTIFACT_VERSION = 1
A = TypeVar("A", bound="Artifact")


@dataclasses.dataclass(frozen=True)
class Artifact:
    """JSON round trip shared by every artifact; unknown keys fail loudly rather than vanish."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "version": ARTIFACT_VERSION, **dataclasses.asdict(self)}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls: type[A], path: str | Path) -> A:
        path = Path(path)
        if not path.is_file():
            raise StageError(f"{cls.__name__} {path} does not exist: run the stage that writes it first")
        raw = json.loads(path.read_text())
        kind = raw.pop("kind", None)
        raw.pop("version", None)
        if kind != cls.__name__:
            raise StageError(f"{path} holds a {kind}, not a {cls.__name__}")
        return cls(**raw)


@dataclasses.dataclass(frozen=True)
class DatasetManifest(Artifact):
    """What curation wrote: the train / eval Parquet files and the exact accounting of every row."""

    train_paths: list[str]
    eval_paths: list[str]
    dropped_paths: list[str]
    num_read: int
    num_train: int
    num_eval: int
    num_dropped: int
    dropped_by_reason: dict[str, int]
    per_source: dict[str, dict[str, int]]  # source -> {"read", "kept", "dropped"}
    train_hash: str  # sha256 over the train rows (order-free sum of row digests): the data lineage tag
    eval_hash: str  # the same over the held-out eval rows
    config: dict[str, Any]  # the data and curate sections used
    # user ids that more than one row read carries: {"ids": how many, "rows": on how many rows, "examples":
    # {id: rows}}; the rows are kept apart by their internal key, so this is a note, not a drop
    repeated_user_ids: dict[str, Any] = dataclasses.field(default_factory=dict)
    # what shaped this output (pipelines.fingerprint.curate_fingerprint); "" when an input could not be hashed,
    # so the output is never reused
    fingerprint: str = ""

    @property
    def num_kept(self) -> int:
        return self.num_train + self.num_eval

    @property
    def data_hashes(self) -> dict[str, str]:
        return {"train": self.train_hash, "eval": self.eval_hash}


@dataclasses.dataclass(frozen=True)
class TrainResult(Artifact):
    """What training wrote: the final adapter in PEFT format, its metrics and lineage."""

    run_name: str
    adapter_path: str
    base_model: str
    metrics: dict[str, float]
    checkpoint_path: str | None  # the checkpoint the adapter was exported from
    mlflow_run_id: str | None
    train_hash: str
    eval_hash: str
    fingerprint: str  # what shaped the result (pipelines.fingerprint); keys the run's directory
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TuneResult(Artifact):
    """What the search wrote: every trial's config and metric, and the best trial's adapter."""

    metric: str
    mode: str
    # each: trial_id, params, metrics (the last reported), steps, stopped_early, error, train_result
    trials: list[dict[str, Any]]
    best_trial: dict[str, Any]
    best_train_result: str  # path of the best trial's TrainResult JSON
    fingerprint: str = ""  # of the search: the base run's fingerprint plus the tune section
    mlflow_run_id: str = ""  # the search's parent run; each trial's run is nested under it
    plots: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Registration(Artifact):
    """What registration did: the model version and whether `champion` moved to it."""

    model_name: str
    version: str
    aliases: list[str]  # the aliases the version holds now
    promoted: bool  # whether `champion` moved to this version
    reason: str  # the gate's (or the person's) reason, as recorded on the version
    champion_version: str | None = None  # the champion after the decision
    gate_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # measured on the gate set
    source: str | None = None  # the TrainResult or TuneResult JSON the adapter came from


MANIFEST_FILE = "manifest.json"


def tune_result_path(cfg: RayloraConfig) -> Path:
    """Where the search writes its TuneResult and registration looks for it."""
    return cfg.path("tune", cfg.run_name, "tune_result.json")


def curated_manifest_path(cfg: RayloraConfig) -> Path:
    """Where curation writes its manifest and training and tuning read it."""
    return cfg.path(cfg.curate.output_dir, MANIFEST_FILE)


def read_curated_manifest(cfg: RayloraConfig, config_path: str) -> DatasetManifest:
    """The curated dataset's manifest, or a StageError that says which ``raylora curate`` to run first."""
    path = curated_manifest_path(cfg)
    if not path.is_file():
        raise StageError(f"no curated dataset at {path}: run `raylora curate {config_path}` first")
    return DatasetManifest.read(path)
