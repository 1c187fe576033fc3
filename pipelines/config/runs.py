"""Around a run: search (``tune``), promotion (``register``), MLflow (``tracking``), Ray (``cluster``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipelines.config.base import Section


class TuneConfig(Section):
    num_samples: int = Field(4, ge=1, description="trials sampled from search_space")
    metric: str = Field("eval_loss", description="reported metric that ranks trials and stops weak ones")
    mode: Literal["min", "max"] = Field(
        "min", description="min or max: whether a lower or higher metric is better")
    search_space: dict[str, Any] = Field(
        default_factory=lambda: {
            "adapter.r": {"choice": [4, 8, 16]},
            "adapter.alpha": {"choice": [8, 16, 32]},
            "train.lr": {"loguniform": [1e-4, 1e-3]},
        },
        description="dotted config key -> {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}",
    )
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha stops trials behind the others early; fifo runs every trial to the end")
    grace_period: int = Field(1, ge=1, description="reports a trial makes before ASHA may stop it")
    max_concurrent_trials: int = Field(1, ge=1, description="trials running at once")


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


class TrackingConfig(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null is sqlite:///<workdir>/mlflow.db")
    experiment: str = Field(
        "raylora", description="MLflow experiment the runs are logged in (created if missing)")


class ClusterConfig(Section):
    address: str | None = Field(
        None, description="null starts Ray locally; 'auto' or ray://host:10001 joins one")
    num_workers: int = Field(1, ge=1, description="Ray Train workers, one data-parallel rank each")
    use_gpu: bool = Field(False, description="train on GPUs (NCCL); false trains on CPUs (gloo)")
    cpus_per_worker: float = Field(
        1.0, gt=0.0, description="CPUs per worker; the cluster must keep one CPU beside them for Ray Data")
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
