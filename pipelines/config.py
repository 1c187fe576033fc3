"""The one typed configuration of the whole pipeline.

Loaded once from YAML with ``a.b.c=value`` overrides (the Axolotl / torchtune habit):

    raylora train configs/demo.yaml adapter.r=16 train.lr=1e-4

Every model forbids unknown keys; cross-field rules live in validators, so a bad config
fails here, before any Ray work starts, with a message that names the key and the fix.
Only plain dicts cross Ray boundaries: ``cfg.model_dump()`` out, ``RayloraConfig.model_validate`` in.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError

TINY_MODEL = "tiny"  # `model.base: tiny` names the offline tiny model that `raylora demo-assets` builds


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(Section):
    base: str = Field(TINY_MODEL, description="Hugging Face causal LM path or id, or 'tiny' for the offline model")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_seq_len: int = Field(256, gt=8)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


class DataSource(Section):
    path: str = Field(description="file, glob, remote URI, or 'hf://<dataset id>'")
    format: Literal["auto", "alpaca", "sharegpt", "openai", "prompt_completion"] = "auto"
    name: str | None = Field(None, description="source label; defaults to the file stem")
    field_map: dict[str, str] = Field(default_factory=dict, description="canonical field -> field in this source")
    split: str = "train"


class DataConfig(Section):
    sources: list[DataSource] = Field(min_length=1)
    eval_sets: list[str] = Field(default_factory=list, description="held-out eval files, for decontamination and eval")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    eval_size: int | None = Field(None, ge=1, description="fixed eval split size; wins over eval_fraction")
    tokenizer: str | None = Field(None, description="tokenizer for length filters; defaults to model.base")


class CurateConfig(Section):
    output_dir: str = "curated"
    min_answer_chars: int = Field(1, ge=0)
    min_answer_ratio: float = Field(0.05, ge=0.0, description="answer chars / prompt chars below this is too short")
    short_answer_min_prompt_words: int = Field(
        30, ge=1, description="only prompts this long are judged by min_answer_ratio ('7' answers 'What is 3 + 4?')")
    max_tokens: int | None = Field(None, gt=0, description="over-long cut-off; defaults to model.max_seq_len")
    drop_refusals: bool = True
    max_repeated_ngram_fraction: float = Field(0.3, gt=0.0, le=1.0)
    max_repeated_line_fraction: float = Field(0.3, gt=0.0, le=1.0)
    languages: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 allow-list; [] keeps all")
    language_min_letters: int = Field(60, ge=0, description="shorter texts are not judged: language id is noise there")
    language_min_confidence: float = Field(0.9, gt=0.0, le=1.0)
    exact_dedup: bool = True
    near_dedup_threshold: float | None = Field(0.7, gt=0.0, le=1.0, description="Jaccard; null turns it off")
    minhash_num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(3, ge=1)
    decontaminate_ngram: int | None = Field(8, ge=3, description="n-gram length; null turns it off")
    quality_top_k: int | None = Field(None, ge=1, description="keep the k best rows by quality score")
    diversity_select: int | None = Field(None, ge=1, description="keep this many rows chosen for embedding diversity")
    embedding_model: str | None = Field(None, description="sentence-transformers path; defaults to the bundled MiniLM")


class QuantConfig(Section):
    """bitsandbytes 4-bit settings for a quantised base (QLoRA, QDoRA)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantise the quantisation constants too (~0.37 bit/param saved)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quant_storage: Literal["uint8", "float32", "bfloat16", "float16"] = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in; ZeRO-3 needs it equal to compute_dtype"
    )


class AdapterConfig(Section):
    """Which adapter to put on the frozen base; the rules that need only this section live here."""

    method: Literal["lora", "qlora", "dora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: int | None = Field(None, ge=1, description="defaults to 2r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["qv", "all-linear"] | list[str] = Field(
        "all-linear", description="module names, or 'qv' (query and value only) or 'all-linear' (every linear "
        "layer but the LM head)"
    )
    use_rslora: bool = Field(False, description="scale by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)")
    init: Literal["gaussian", "pissa", "loftq"] = "gaussian"
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained in full, e.g. lm_head")
    quantize_base: bool = Field(False, description="4-bit base under lora/dora (QDoRA); implied by qlora")
    quant: QuantConfig = Field(default_factory=QuantConfig)

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r

    @property
    def is_quantized(self) -> bool:
        return self.method == "qlora" or self.quantize_base

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("target_modules is empty: list module names, or use 'qv' or 'all-linear'")
        return v

    @model_validator(mode="after")
    def _adapter_rules(self) -> AdapterConfig:
        if self.init == "loftq" and not self.is_quantized:
            raise ValueError("adapter.init=loftq initialises against a quantised base: use adapter.method=qlora")
        if self.init in ("pissa", "loftq") and self.method == "dora":
            raise ValueError(f"adapter.init={self.init} is not defined for DoRA: use adapter.init=gaussian")
        if self.init == "pissa" and self.is_quantized:
            raise ValueError(
                "adapter.init=pissa needs the full-precision base weights for its SVD: use adapter.init=loftq "
                "with a 4-bit base, or adapter.method=lora with adapter.quantize_base=false"
            )
        return self


class DeepSpeedConfig(Section):
    stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    config_file: str | None = Field(None, description="a DeepSpeed JSON; batch sizes, lr and precision are filled in")


class TrainConfig(Section):
    num_epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="wins over num_epochs")
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    packing: bool = True
    train_on_responses_only: bool = True
    log_every: int = Field(10, ge=1, description="steps between progress lines and reported train metrics")
    eval_every: int = Field(50, ge=1)
    eval_max_new_tokens: int = Field(16, ge=1)
    eval_generate_limit: int | None = Field(64, ge=1, description="eval rows scored by greedy exact match")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0


class TuneConfig(Section):
    num_samples: int = Field(4, ge=1)
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    search_space: dict[str, Any] = Field(
        default_factory=lambda: {
            "adapter.r": {"choice": [4, 8, 16]},
            "adapter.alpha": {"choice": [8, 16, 32]},
            "train.lr": {"loguniform": [1e-4, 1e-3]},
        },
        description="dotted config key -> {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}",
    )
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)


class RegisterConfig(Section):
    model_name: str = "raylora-demo"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    gate_metric: str = "eval_loss"
    gate_mode: Literal["min", "max"] = "min"
    min_improvement: float = Field(0.0, ge=0.0)


class TrackingConfig(Section):
    tracking_uri: str | None = Field(None, description="defaults to sqlite:///<workdir>/mlflow.db")
    experiment: str = "raylora"


class ClusterConfig(Section):
    address: str | None = Field(None, description="null starts Ray locally; 'auto' or ray://host:10001 joins one")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = Field(1, ge=0)
    storage_path: str | None = Field(None, description="Ray Train storage; defaults to <workdir>/ray_results")
    runtime_env: dict[str, Any] = Field(default_factory=dict)


# The section is called `register` as users write it; the name shadows the harmless ABC classmethod
# BaseModel.register, which pydantic warns about at class creation.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class RayloraConfig(Section):
    run_name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: str = Field(".raylora", description="every artifact of the run lives under here")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    curate: CurateConfig = Field(default_factory=CurateConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

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
        if self.train.deepspeed.offload_params and self.train.deepspeed.stage != 3:
            raise ValueError("train.deepspeed.offload_params needs ZeRO stage 3: set train.deepspeed.stage=3")
        return self

    def path(self, *parts: str) -> Path:
        """A path under the run's workdir."""
        return Path(self.workdir).joinpath(*parts)

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{self.path('mlflow.db').resolve()}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], value); the value is read as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. adapter.r=16)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    if isinstance(value, str):
        value = _yaml11_float(value)
    return key.split("."), value


def _yaml11_float(text: str) -> float | str:
    """YAML 1.1 reads ``1e-4`` as a string; on the command line it is a learning rate."""
    try:
        return float(text) if any(ch.isdigit() for ch in text) and text.strip() == text else text
    except ValueError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` into a copy of the raw config dict."""
    out = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _section_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys at the section that ``loc`` points into, for 'did you mean' hints."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(part) for part in loc) or "(config)"
        if item["type"] == "extra_forbidden":
            allowed = _section_fields(RayloraConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{key}: unknown key; {hint}allowed here: {', '.join(allowed)}")
        elif item["type"] == "missing":
            lines.append(f"{key}: required; add it to the YAML or pass {key}=...")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" + (f" (got {item['input']!r})" if item["type"] != "value_error" else ""))
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RayloraConfig:
    """Read a YAML config, apply ``a.b.c=value`` overrides, validate. Raises ConfigError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass a YAML file such as configs/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, ...), not {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides or []))


def validate_config(raw: dict[str, Any]) -> RayloraConfig:
    try:
        return RayloraConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def dump_config(cfg: RayloraConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
