"""Adapter config -> PEFT model on any Hugging Face causal LM: the base frozen (optionally 4-bit), the adapter on top;
or, for full fine-tuning, the base itself with every weight trainable.

    from adapters.build import build_model
    built = build_model(cfg.model, cfg.adapter)   # cfg.model.base must be a path or hub id

Methods: ``lora``; ``qlora`` (LoRA on a bitsandbytes 4-bit base); ``dora`` (weight-decomposed LoRA, with
``quantize_base=true`` on a 4-bit base: QDoRA). Inits: ``gaussian``; ``pissa`` (principal singular vectors of
the full-precision weight); ``loftq`` (LoRA fitted to the 4-bit quantisation error, QLoRA only).
The tokenizer carries the chat template that renders every conversation (``model.chat_template`` or the
model's own); the rows of a configured template's special tokens are trained beside the adapter (PEFT's
``trainable_token_indices``), after the embeddings grow for any token the template added.
A PiSSA adapter is saved as PEFT saves it (``init_lora_weights: pissa``): loading it redoes the same SVD on
the same base, so it reloads exactly; it does not apply to a different base.
``full`` is full fine-tuning: no PEFT wrapping, every weight of the base trains (the model itself is returned).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

from adapters.generation import keep_4bit_layout
from adapters.templates import resolve_chat_template
from adapters.tokenizer import load_tokenizer
from pipelines.config import TINY_MODEL, AdapterConfig, ModelConfig
from pipelines.errors import ConfigError

QV_TARGETS = ["q_proj", "v_proj"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "uint8": torch.uint8}
PEFT_INIT = {"gaussian": "gaussian", "pissa": "pissa", "loftq": "gaussian"}  # loftq is applied after PEFT: see below


@dataclass
class BuiltModel:
    model: PeftModel | PreTrainedModel  # the plain model under full fine-tuning (adapter.method=full)
    tokenizer: PreTrainedTokenizerBase
    trainable_params: int
    total_params: int


def target_modules(adapter_cfg: AdapterConfig) -> list[str] | str:
    if adapter_cfg.target_modules == "qv":
        return QV_TARGETS
    return adapter_cfg.target_modules  # "all-linear" is PEFT's own preset (every linear but the LM head)


def peft_config(adapter_cfg: AdapterConfig, trainable_tokens: dict[str, list[int]] | None = None) -> LoraConfig:
    """PEFT's LoRA config; ``trainable_tokens`` maps embedding layers to rows trained beside the adapter."""
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=adapter_cfg.r,
        lora_alpha=adapter_cfg.lora_alpha,
        lora_dropout=adapter_cfg.dropout,
        target_modules=target_modules(adapter_cfg),
        use_rslora=adapter_cfg.use_rslora,
        use_dora=adapter_cfg.method == "dora",
        init_lora_weights=PEFT_INIT[adapter_cfg.init],
        modules_to_save=adapter_cfg.modules_to_save or None,
        trainable_token_indices=trainable_tokens or None,
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
    """The base model, every parameter frozen, 4-bit when the adapter config asks for it."""
    if model_cfg.base == TINY_MODEL:
        raise ConfigError("model.base=tiny is a name, not a path: resolve it with pipelines.models.resolve_base_model")
    model = AutoModelForCausalLM.from_pretrained(
        model_cfg.base,
        revision=model_cfg.revision,
        dtype=DTYPES[model_cfg.dtype],
        quantization_config=quantization_config(adapter_cfg),
        trust_remote_code=model_cfg.trust_remote_code,
    )
    model.config.use_cache = False
    model.requires_grad_(False)
    if adapter_cfg.is_quantized:
        keep_4bit_layout(model)
    return model


def check_targets(model: torch.nn.Module, adapter_cfg: AdapterConfig) -> None:
    """Fail with the model's own linear-layer names when a listed target does not exist in it."""
    if adapter_cfg.is_full:
        return  # no adapter: adapter.target_modules is not used
    targets = target_modules(adapter_cfg)
    if isinstance(targets, str):
        return
    module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in module_names]
    if missing:
        linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                               if isinstance(module, torch.nn.Linear) and name})
        raise ConfigError(
            f"adapter.target_modules {missing} are not modules of {model.config.model_type}: "
            f"pick from its linear layers {linear_names}, or use adapter.target_modules=all-linear"
        )


def template_token_ids(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token rows trained beside the adapter: the special tokens of ``model.chat_template``, which a base
    model never learned (new rows, or rows pretraining left untouched, as in Llama 3's base)."""
    if model_cfg.chat_template is None:
        return []
    tokens = resolve_chat_template(model_cfg.chat_template).special_tokens
    return sorted(tokenizer.convert_tokens_to_ids(list(tokens)))


def fit_embeddings(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings (and an untied LM head) when the tokenizer has tokens past them; frozen like the rest."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
        model.requires_grad_(False)  # the resized layers are new modules, trainable by default


def trainable_token_layers(model: torch.nn.Module, token_ids: list[int],
                           adapter_cfg: AdapterConfig) -> dict[str, list[int]]:
    """Where PEFT trains ``token_ids``: the input embeddings, and the LM head too unless it is tied to them
    (the model must learn to write a new token, not only to read it). Layers trained in full via
    adapter.modules_to_save already cover them."""
    if not token_ids:
        return {}
    layers = [model.get_input_embeddings()]
    if not model.config.get_text_config().tie_word_embeddings:
        layers.append(model.get_output_embeddings())
    names = [name for name, module in model.named_modules() if any(module is layer for layer in layers)]
    return {name: token_ids for name in names if name.rsplit(".", 1)[-1] not in adapter_cfg.modules_to_save}


def local_model_dir(model_cfg: ModelConfig) -> Path:
    """The base model's directory on disk: the path itself, or the hub cache's snapshot of the id."""
    if Path(model_cfg.base).is_dir():
        return Path(model_cfg.base)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_cfg.base, revision=model_cfg.revision, local_files_only=True))


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConfigError(f"adapter.init=loftq reads the full-precision weights from safetensors, and {model_dir} has "
                      "none: download the model to a local directory (model.base=/path) or use adapter.init=gaussian")


@torch.no_grad()
def loftq_init(model: PeftModel, base_dir: str | Path) -> int:
    """Fit each LoRA pair to the 4-bit quantisation error of its weight (LoftQ, one iteration); returns #layers.

    For a frozen 4-bit weight Q(W), the residual W - deq(Q(W)) is approximated by its rank-r SVD, so that
    deq(Q(W)) + scaling * B @ A starts closer to W than the quantised weight alone. PEFT's own
    ``replace_lora_weights_loftq`` does the same but moves the weights to CUDA unconditionally and ignores
    the LoRA scaling (exact only when alpha == r), hence this version.
    """
    import bitsandbytes as bnb
    from peft.tuners.lora import Linear4bit
    from safetensors import safe_open

    files = _safetensors_files(Path(base_dir))
    handles = [safe_open(str(f), framework="pt") for f in files]
    key_to_handle = {key: h for h in handles for key in h.keys()}  # noqa: SIM118 (safe_open is not a dict)
    prefix = "base_model.model."
    replaced = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        key = name.removeprefix(prefix) + ".weight"
        weight = key_to_handle[key].get_tensor(key).to(torch.float32)
        base_weight = module.get_base_layer().weight
        dequantised = bnb.functional.dequantize_4bit(base_weight.data, base_weight.quant_state).to(torch.float32)
        u, s, vh = torch.linalg.svd(weight - dequantised, full_matrices=False)
        r, scaling = module.r["default"], module.scaling["default"]
        root = s[:r].sqrt()
        lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
        lora_b.copy_((u[:, :r] * root) / scaling**0.5)
        lora_a.copy_((root[:, None] * vh[:r]) / scaling**0.5)
        replaced += 1
    if not replaced:
        raise ConfigError("adapter.init=loftq found no 4-bit LoRA layer: use adapter.method=qlora")
    return replaced


def build_model(model_cfg: ModelConfig, adapter_cfg: AdapterConfig) -> BuiltModel:
    """Load the base frozen (4-bit for QLoRA / QDoRA), apply the adapter, set up gradient checkpointing; under
    full fine-tuning, unfreeze the base instead of applying an adapter.

    Unlike ``peft.prepare_model_for_kbit_training``, the base's non-4-bit weights are not upcast to float32:
    ZeRO-3 shards a 4-bit base only when every parameter has one dtype, and the memory planner counts them
    at ``model.dtype``.
    """
    tokenizer = load_tokenizer(model_cfg)
    base = load_base(model_cfg, adapter_cfg)
    fit_embeddings(base, tokenizer)
    check_targets(base, adapter_cfg)
    if model_cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need inputs that need grad
    if adapter_cfg.is_full:
        # full fine-tuning: no adapter; every weight trains, the rows a chat template added among them
        base.requires_grad_(True)
        total = sum(p.numel() for p in base.parameters())  # a tied embedding is one parameter, counted once
        return BuiltModel(model=base, tokenizer=tokenizer, trainable_params=total, total_params=total)
    token_layers = trainable_token_layers(base, template_token_ids(model_cfg, tokenizer), adapter_cfg)
    model = get_peft_model(base, peft_config(adapter_cfg, token_layers))
    if adapter_cfg.init == "loftq":
        loftq_init(model, local_model_dir(model_cfg))
    # as PEFT counts them: 4-bit weights at logical size, ZeRO-3 shards at full size
    trainable, total = model.get_nb_trainable_parameters()
    return BuiltModel(model=model, tokenizer=tokenizer, trainable_params=trainable, total_params=total)
