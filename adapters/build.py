"""Adapter config -> PEFT model on any Hugging Face causal LM: the base frozen (optionally 4-bit), the adapter on top.

    from adapters.build import build_model
    built = build_model(cfg.model, cfg.adapter)   # cfg.model.base must be a path or hub id
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from pipelines.config import TINY_MODEL, AdapterConfig, ModelConfig

QV_TARGETS = ["q_proj", "v_proj"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "uint8": torch.uint8}


@dataclass
class BuiltModel:
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    trainable_params: int
    total_params: int


def target_modules(adapter_cfg: AdapterConfig) -> list[str] | str:
    if adapter_cfg.target_modules == "qv":
        return QV_TARGETS
    return adapter_cfg.target_modules  # "all-linear" is PEFT's own preset (every linear but the LM head)


def peft_config(adapter_cfg: AdapterConfig) -> LoraConfig:
    init = {"gaussian": "gaussian", "pissa": "pissa", "loftq": "loftq"}[adapter_cfg.init]
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=adapter_cfg.r,
        lora_alpha=adapter_cfg.lora_alpha,
        lora_dropout=adapter_cfg.dropout,
        target_modules=target_modules(adapter_cfg),
        use_rslora=adapter_cfg.use_rslora,
        use_dora=adapter_cfg.method == "dora",
        init_lora_weights=init,
        modules_to_save=adapter_cfg.modules_to_save or None,
    )


def quantization_config(adapter_cfg: AdapterConfig) -> BitsAndBytesConfig | None:
    if not adapter_cfg.is_quantized:
        return None
    q = adapter_cfg.quant
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
        bnb_4bit_quant_storage=DTYPES[q.quant_storage],
    )


def load_base(model_cfg: ModelConfig, adapter_cfg: AdapterConfig) -> AutoModelForCausalLM:
    if model_cfg.base == TINY_MODEL:
        raise ValueError("model.base=tiny is a name, not a path: resolve it with pipelines.assets.resolve_base_model")
    model = AutoModelForCausalLM.from_pretrained(
        model_cfg.base,
        revision=model_cfg.revision,
        dtype=DTYPES[model_cfg.dtype],
        quantization_config=quantization_config(adapter_cfg),
        trust_remote_code=model_cfg.trust_remote_code,
    )
    model.config.use_cache = False
    return model


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), counting 4-bit packed weights at their logical size as PEFT does."""
    trainable, total = 0, 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def build_model(model_cfg: ModelConfig, adapter_cfg: AdapterConfig) -> BuiltModel:
    """Load the base frozen (4-bit for QLoRA), apply the adapter, set up gradient checkpointing."""
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.base, revision=model_cfg.revision,
                                              trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = load_base(model_cfg, adapter_cfg)
    if adapter_cfg.is_quantized:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
    elif model_cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need grad inputs
    model = get_peft_model(base, peft_config(adapter_cfg))
    trainable, total = count_params(model)
    return BuiltModel(model=model, tokenizer=tokenizer, trainable_params=trainable, total_params=total)
