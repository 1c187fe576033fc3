"""The model sections: the base model (``model``) and the adapter trained on it (``adapter``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Section

TINY_MODEL = "tiny"  # `model.base: tiny` names the offline tiny model that `raylora demo-assets` builds


class ModelConfig(Section):
    base: str = Field(
        TINY_MODEL, description="Hugging Face causal LM path or id, or 'tiny' for the offline model")
    revision: str | None = Field(
        None, description="hub branch, tag or commit of model.base; null takes the default branch")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the base weights load in (the unquantised layers, for a 4-bit base)")
    max_seq_len: int = Field(
        256, gt=8, description="tokens per training block and eval row; the default curate.max_tokens")
    trust_remote_code: bool = Field(
        False, description="run the Python code in the model's repository (custom architectures need it)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less activation memory, more compute")
    chat_template: str | None = Field(
        None, description="chat template for a base model without one, or to override the model's own: a "
        "built-in (chatml, llama3, mistral, alpaca), a Jinja string, or a file; special tokens it uses that the "
        "tokenizer lacks are added, and the embedding rows of its special tokens are trained with the adapter")
    config_file: str | None = Field(
        None, description="the model's Hugging Face config.json on disk (e.g. configs/models/*.json): "
        "`raylora plan` reads it when model.base cannot be reached; no weights needed")


class QuantConfig(Section):
    """bitsandbytes 4-bit settings for a quantised base (QLoRA, QDoRA)."""

    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (NormalFloat, the QLoRA choice) or fp4 (4-bit float)")
    double_quant: bool = Field(
        True, description="quantise the quantisation constants too (~0.37 bit/param saved)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the 4-bit weights are dequantised to for each matmul")
    quant_storage: Literal["uint8", "float32", "bfloat16", "float16"] = Field(
        "uint8",
        description="dtype the packed 4-bit weights are stored in; ZeRO-3 needs it equal to compute_dtype")


FULL = "full"  # adapter.method that trains every base weight: no adapter, the saved artifact is a whole model


class AdapterConfig(Section):
    """Which adapter to put on the frozen base (or none: full fine-tuning); the rules that need only this
    section live here."""

    method: Literal["lora", "qlora", "dora", "full"] = Field(
        "lora", description="lora, qlora (LoRA on a 4-bit base), dora (weight-decomposed LoRA), or full (full "
        "fine-tuning: every base weight trains, no adapter; the saved artifact is a whole model, and the other "
        "adapter.* keys but quant are unused)")
    r: int = Field(8, ge=1, description="rank of the low-rank update B @ A added to each target weight")
    alpha: int | None = Field(
        None, ge=1, description="scaling numerator: the update is scaled by alpha/r; null means 2r")
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="dropout probability on the adapter's input; 0 is off")
    target_modules: Literal["qv", "all-linear"] | list[str] = Field(
        "all-linear",
        description="module names, or 'qv' (query and value only) or 'all-linear' (every linear "
        "layer but the LM head)"
    )
    use_rslora: bool = Field(
        False, description="scale by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)")
    init: Literal["gaussian", "pissa", "loftq"] = Field(
        "gaussian", description="gaussian (random A, zero B), pissa (principal singular vectors of the "
        "weight) or loftq (fitted to the 4-bit quantisation error)"
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="modules trained in full, e.g. lm_head")
    quantize_base: bool = Field(
        False, description="4-bit base under lora/dora (QDoRA); implied by qlora")
    quant: QuantConfig = Field(
        default_factory=QuantConfig,
        description="bitsandbytes 4-bit settings, used only when the base is 4-bit")

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r

    @property
    def is_quantized(self) -> bool:
        return self.method == "qlora" or self.quantize_base

    @property
    def is_full(self) -> bool:
        """Full fine-tuning: every weight of the model trains, and a whole model is saved instead of an adapter."""
        return self.method == FULL

    @property
    def label(self) -> str:
        """How progress lines and reports name the method: its rank, which full fine-tuning has not."""
        return "full fine-tuning" if self.is_full else f"{self.method} r={self.r}"

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("target_modules is empty: list module names, or use 'qv' or 'all-linear'")
        return v

    @model_validator(mode="after")
    def _adapter_rules(self) -> AdapterConfig:
        if self.is_full:
            self._check_full()
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

    def _check_full(self) -> None:
        """Full fine-tuning updates the weights themselves: settings a user chooses for an adapter on a frozen
        base are refused rather than silently ignored (r, alpha, dropout and targets keep their defaults unused)."""
        if self.quantize_base:
            raise ValueError("adapter.method=full trains every weight, and a 4-bit base cannot be trained: set "
                             "adapter.quantize_base=false (or use adapter.method=qlora)")
        if self.init != "gaussian":
            raise ValueError(f"adapter.init={self.init} initialises LoRA weights, and adapter.method=full has none: "
                             "set adapter.init=gaussian (or use adapter.method=lora)")
        if self.modules_to_save:
            raise ValueError("adapter.modules_to_save names modules trained beside an adapter, and adapter.method=full "
                             "trains every module already: set adapter.modules_to_save=[]")
