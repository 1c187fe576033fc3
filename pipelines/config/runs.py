"""Around a run: search (``tune``), promotion (``register``), MLflow (``tracking``), Ray (``cluster``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Section
from pipelines.config.secrets import URI_PASSWORD

SEARCH_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class TuneConfig(Section):
    enabled: bool = Field(
        False, description="whether `raylora run` searches before training; `raylora run --skip-tune` turns it off")
    search: Literal["random", "grid", "tpe"] = Field(
        "random",
        description="random samples the space; grid runs every combination of choice/grid values; "
        "tpe is Optuna's Tree-structured Parzen Estimator")
    num_samples: int = Field(
        4, ge=1, description="trials sampled from search_space (random, tpe); grid repeats the whole grid this often")
    metric: str = Field("eval_loss", description="reported metric that ranks trials and stops weak ones")
    mode: Literal["min", "max"] = Field(
        "min", description="min or max: whether a lower or higher metric is better")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "adapter.r": {"choice": [4, 8, 16]},
            "adapter.alpha": {"choice": ["1r", "2r"]},
            "train.lr": {"loguniform": [1e-4, 1e-3]},
        },
        description="dotted config key -> {choice: [...]} | {grid: [...]} | {uniform: [lo, hi]} | "
        "{loguniform: [lo, hi]} | {randint: [lo, hi)}; adapter.alpha may be a multiple of r written '2r'",
    )
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha stops trials behind the others early; fifo runs every trial to the end")
    grace_period: int = Field(
        1, ge=1, description="evaluations (train.eval_every steps each) a trial makes before ASHA may stop it")
    reduction_factor: int = Field(
        2, ge=2, description="ASHA keeps the best 1/reduction_factor of the trials at each rung")
    max_concurrent_trials: int | None = Field(
        None, ge=1,
        description="trials running at once; null derives it from the cluster's CPUs (or GPUs) so trials fit")
    seed: int = Field(0, description="seed of the random and TPE searches")

    @field_validator("search_space")
    @classmethod
    def _one_known_kind_per_key(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
                raise ValueError(f"tune.search_space.{key} must be one of {{choice: [...]}}, {{grid: [...]}}, "
                                 f"{{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, {{randint: [lo, hi]}} (got {spec})")
            (kind, values), = spec.items()
            if not isinstance(values, list) or not values:
                raise ValueError(f"tune.search_space.{key}.{kind} needs a non-empty list (got {values!r})")
            if kind in ("uniform", "loguniform", "randint") and (
                    len(values) != 2 or not all(isinstance(v, int | float) for v in values) or values[0] >= values[1]):
                raise ValueError(f"tune.search_space.{key}.{kind} needs [low, high] with low < high (got {values})")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"tune.search_space.{key}.loguniform needs low > 0 (got {values})")
        return space


# what the gate evaluation measures on register.gate_eval_set (the train stage's eval metrics)
GATE_METRICS = ("eval_loss", "eval_perplexity", "eval_exact_match")


class GateBounds(Section):
    min: float | None = Field(None, description="the metric must be at least this; null is no lower bound")
    max: float | None = Field(None, description="the metric must be at most this; null is no upper bound")

    @model_validator(mode="after")
    def _some_bound(self) -> GateBounds:
        if self.min is None and self.max is None:
            raise ValueError("a register.gates entry needs min or max, e.g. {min: 0.2}")
        return self


def no_password_in(uri: str | None) -> str | None:
    """An MLflow URI is written into every run's record, so it must not carry a password."""
    if uri is not None and URI_PASSWORD.search(uri):
        raise ValueError("holds a password, which would be written wherever the config is: remove it from the URI "
                         "and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment (and in "
                         "cluster.runtime_env.env_vars for a job)")
    return uri


class RegisterConfig(Section):
    model_name: str = Field(
        "raylora-demo", description="MLflow registered model the adapter versions go under")
    champion_alias: str = Field("champion", description="MLflow alias of the version in service")
    challenger_alias: str = Field("challenger", description="MLflow alias of the new version before the gate")
    gate_metric: str = Field("eval_loss", description="metric the challenger must beat the champion on")
    gate_mode: Literal["min", "max"] = Field(
        "min", description="min or max: whether a lower or higher gate_metric is better")
    min_improvement: float = Field(
        0.0, ge=0.0,
        description="margin, in gate_metric units, the challenger must win by to become champion")
    gates: dict[str, GateBounds] = Field(
        default_factory=dict,
        description="metric -> {min, max} the challenger must meet on gate_eval_set to become champion, e.g. "
        "{eval_exact_match: {min: 0.2}, eval_loss: {max: 2.0}}; {} is none")
    gate_eval_set: str | None = Field(
        None,
        description="the fixed eval set (a path or file stem from data.eval_sets) the gate is measured on; "
        "null is the first of data.eval_sets")
    registry_uri: str | None = Field(
        None, description="MLflow model registry URI; null is the tracking URI")
    max_new_tokens: int = Field(
        64, ge=1, description="tokens the registered model generates per prompt when served")
    lock_ttl_s: float = Field(
        600.0, gt=0.0,
        description="seconds the alias lock stays held at most; a crashed registration's lock expires after it")
    lock_wait_s: float = Field(
        900.0, gt=0.0, description="seconds a registration waits for another one's alias lock before failing")

    @field_validator("registry_uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        return no_password_in(uri)

    @field_validator("gate_metric")
    @classmethod
    def _known_gate_metric(cls, value: str) -> str:
        if value not in GATE_METRICS:
            raise ValueError(f"register.gate_metric={value} is not measured on the gate set: use one of "
                             f"{', '.join(GATE_METRICS)}")
        return value

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, value: dict[str, GateBounds]) -> dict[str, GateBounds]:
        unknown = sorted(set(value) - set(GATE_METRICS))
        if unknown:
            raise ValueError(f"register.gates {unknown} are not measured on the gate set: use "
                             f"{', '.join(GATE_METRICS)}")
        return value


class TrackingConfig(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null is sqlite:///<workdir>/mlflow.db")
    experiment: str = Field(
        "raylora", description="MLflow experiment the runs are logged in (created if missing)")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        return no_password_in(uri)


class ClusterConfig(Section):
    address: str | None = Field(
        None, description="null starts Ray locally; 'auto' or ray://host:10001 joins one")
    num_workers: int = Field(1, ge=1, description="Ray Train workers, one data-parallel rank each")
    use_gpu: bool = Field(False, description="train on GPUs (NCCL); false trains on CPUs (gloo)")
    cpus_per_worker: float = Field(
        1.0, gt=0.0, description="CPUs per worker; a CPU worker runs one torch thread per whole CPU (at least one)")
    gpus_per_worker: float = Field(
        0.0, ge=0.0, description="GPUs per worker; must be > 0 when use_gpu is true")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="Ray placement group strategy: PACK workers onto few nodes, SPREAD them across nodes")
    max_failures: int = Field(
        1, ge=0,
        description="worker failures survived by restarting from the latest checkpoint; 0 fails at once")
    storage_path: str | None = Field(
        None, description="Ray Train storage; defaults to <workdir>/ray_results")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env for the job (env_vars, pip, working_dir, ...); {} is none")
