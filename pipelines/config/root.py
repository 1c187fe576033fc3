"""``RayloraConfig``: every section under one root, and the rules that span sections."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Section
from pipelines.config.data import CurateConfig, DataConfig
from pipelines.config.model import AdapterConfig, ModelConfig
from pipelines.config.runs import ClusterConfig, RegisterConfig, TrackingConfig, TuneConfig
from pipelines.config.search_space import check_search_space
from pipelines.config.secrets import redact
from pipelines.config.train import TrainConfig

# The section is called `register` as users write it; the name shadows the harmless ABC classmethod
# BaseModel.register, which pydantic warns about at class creation.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


def eval_set_name(path: str) -> str:
    """An eval set's short name, as ``register.gate_eval_set`` may give it: the file stem."""
    return Path(path).stem


class RayloraConfig(Section):
    run_name: str = Field(
        "demo", pattern=r"^[A-Za-z0-9_.-]+$",
        description="names the run in MLflow and Ray Train, and its directory <workdir>/train/<run_name>: letters, "
        "digits, _ . - (not . or .., which name directories that are not the run's)")
    workdir: str = Field(".raylora", description="every artifact of the run lives under here")
    seed: int = Field(0, description="seed of curation's train / eval split and of the demo sample data")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the base model")
    data: DataConfig = Field(description="the data sources and the eval split")
    curate: CurateConfig = Field(
        default_factory=CurateConfig, description="curation: filters, dedup, selection")
    adapter: AdapterConfig = Field(
        default_factory=AdapterConfig, description="the adapter on the frozen base")
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="optimisation, evaluation and checkpoints (train stage)")
    tune: TuneConfig = Field(
        default_factory=TuneConfig, description="the Ray Tune search (tune stage)")
    register: RegisterConfig = Field(
        default_factory=RegisterConfig, description="MLflow registry and promotion gate (register stage)")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="MLflow tracking")
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="the Ray cluster and its workers' resources")

    @field_validator("run_name")
    @classmethod
    def _names_a_directory_of_its_own(cls, name: str) -> str:
        if set(name) == {"."}:
            raise ValueError(f"run_name={name} would name the directory above the runs, not a run's own: use "
                             "letters or digits, e.g. run_name=demo")
        return name

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RayloraConfig:
        quant, stage = self.adapter.quant, self.train.deepspeed.stage
        if self.adapter.is_quantized and stage == 3 and quant.quant_storage != quant.compute_dtype:
            raise ValueError(
                "a 4-bit base under ZeRO-3 needs adapter.quant.quant_storage equal to the compute dtype "
                f"(got quant_storage={quant.quant_storage}, compute_dtype={quant.compute_dtype}): "
                f"set adapter.quant.quant_storage={quant.compute_dtype}"
            )
        if self.adapter.is_quantized and stage == 3 and quant.compute_dtype != self.model.dtype:
            raise ValueError(
                "ZeRO-3 shards a 4-bit base only when every parameter has one dtype: set "
                f"adapter.quant.compute_dtype={self.model.dtype} and adapter.quant.quant_storage={self.model.dtype} "
                f"(model.dtype={self.model.dtype}, got compute_dtype={quant.compute_dtype})"
            )
        if self.cluster.use_gpu and self.cluster.gpus_per_worker == 0:
            raise ValueError("cluster.use_gpu=true needs cluster.gpus_per_worker > 0 (e.g. 1)")
        if not self.cluster.use_gpu and self.train.precision == "fp16":
            raise ValueError("train.precision=fp16 needs GPUs: use train.precision=fp32 or bf16 on CPU")
        if self.train.deepspeed.offload_optimizer and self.train.deepspeed.stage == 0:
            raise ValueError("train.deepspeed.offload_optimizer needs ZeRO: set train.deepspeed.stage=1, 2 or 3")
        if self.train.export == "best" and not self.train.eval:
            raise ValueError("train.export=best ranks checkpoints by eval_loss, which train.eval=false turns off: "
                             "set train.export=last")
        if self.train.deepspeed.offload_params and self.train.deepspeed.stage != 3:
            raise ValueError("train.deepspeed.offload_params needs ZeRO stage 3: set train.deepspeed.stage=3")
        gate_set = self.register.gate_eval_set
        if gate_set is not None and gate_set not in {*self.data.eval_sets, *map(eval_set_name, self.data.eval_sets)}:
            raise ValueError(
                f"register.gate_eval_set={gate_set} is not one of data.eval_sets {self.data.eval_sets}: set it to "
                "one of those paths (or its file stem), or add the file to data.eval_sets")
        gate_path = self.gate_eval_set_path
        if gate_path is not None and self.tune.metric.startswith(f"eval/{eval_set_name(gate_path)}/"):
            raise ValueError(
                f"tune.metric={self.tune.metric} selects trials on the gate set {gate_path}, so the gate would not be "
                "an independent check: set register.gate_eval_set to another of data.eval_sets, or change tune.metric")
        if self.tune.search == "grid" and any(
                kind not in ("choice", "grid") for spec in self.tune.search_space.values() for kind in spec):
            raise ValueError("tune.search=grid runs every combination, so every tune.search_space key needs "
                             "{choice: [...]} or {grid: [...]}: use tune.search=random or tpe for ranges")
        if self.tune.search == "tpe" and any("grid" in spec for spec in self.tune.search_space.values()):
            raise ValueError("tune.search=tpe samples; it does not run grids: write {choice: [...]} instead of "
                             "{grid: [...]} in tune.search_space, or set tune.search=grid")
        check_search_space(type(self), self.model_dump(mode="json"), self.tune.search_space)
        return self

    @property
    def gate_eval_set_path(self) -> str | None:
        """The file the promotion gate is measured on: ``register.gate_eval_set`` (a path or a stem of one of
        ``data.eval_sets``), else the first of ``data.eval_sets``; None when there is none."""
        gate_set = self.register.gate_eval_set
        if gate_set is None:
            return self.data.eval_sets[0] if self.data.eval_sets else None
        return next(p for p in self.data.eval_sets if gate_set in (p, eval_set_name(p)))

    def public_dump(self) -> dict[str, Any]:
        """The config as plain data fit to write down (MLflow, result files, the terminal): secrets redacted."""
        return redact(self.model_dump(mode="json"))

    def path(self, *parts: str) -> Path:
        """A path under the run's workdir."""
        return Path(self.workdir).joinpath(*parts)

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{self.path('mlflow.db').resolve()}"
