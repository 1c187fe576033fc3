"""Memory planner: will this adapter run fit, per GPU, for each ZeRO stage and offload setting?

    raylora plan configs/demo.yaml
    raylora plan configs/demo.yaml --model-config configs/models/llama-2-7b.json --gpu-memory-gib 24 --num-gpus 2

The model is built on PyTorch's meta device from its Hugging Face ``config.json`` (no weights are read) and
the adapter is applied by PEFT itself, so parameter counts are PEFT's, exactly. Bytes are then counted as:

* base weights: frozen, at ``model.dtype``; a 4-bit base stores 4 bits per linear weight plus its
  quantisation constants (bitsandbytes, QLoRA paper section 3: one fp32 absmax per 64 weights = 0.5 bit, or
  with double quantisation an 8-bit absmax plus one fp32 constant per 256 blocks = 8/64 + 32/(64*256) bit);
  embeddings, norms and the LM head stay at ``model.dtype``.
* trainable (adapter) state, per parameter, as in the ZeRO paper (Rajbhandari et al. 2020, section 3) for
  mixed precision: 2 bytes weights + 2 bytes gradients + K bytes optimizer state, where K = 12 for AdamW
  (fp32 master weights, momentum, variance) and K = 8 for SGD with momentum (master weights, momentum);
  in fp32 training there is no master copy: 4 + 4 + 8 (AdamW) or 4 + 4 + 4 (SGD with momentum).
* ZeRO partitions, over N GPUs: stage 1 the optimizer states, stage 2 also the gradients, stage 3 also the
  weights (the frozen base too) and gathers one layer at a time (counted twice: current + prefetched).
  ZeRO-Offload (Ren et al. 2021) moves gradients and optimizer states to CPU memory; stage 3 parameter
  offload moves the weights too, leaving the gathered layers on the GPU.
* full fine-tuning (``adapter.method: full``): no adapter and nothing frozen; every parameter of the model is
  trainable state (weights, gradients, optimizer states as above), ZeRO-3 gathers its trained weights, and
  each linear layer saves its input for its weight's gradient.
* activations: the tensors autograd saves in one forward pass of a Llama-style decoder with fused (flash /
  memory-efficient) attention, counted op by op (see ``activation_bytes``); with gradient checkpointing only
  each layer's input plus one layer recomputed in backward. Attention with an explicit mask on the math
  kernel would add ``b * heads * s^2`` per layer, which this estimate leaves out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from adapters.build import peft_config
from pipelines.config import AdapterConfig, ModelConfig, TrainConfig
from pipelines.errors import ConfigError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANT_BLOCK, DOUBLE_QUANT_BLOCK = 64, 256
FOUR_BIT_BITS = 4 + 32 / QUANT_BLOCK
FOUR_BIT_DOUBLE_QUANT_BITS = 4 + 8 / QUANT_BLOCK + 32 / (QUANT_BLOCK * DOUBLE_QUANT_BLOCK)
RESERVE_GIB = 1.0  # CUDA context, NCCL buffers and allocator fragmentation, kept free on every GPU


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs from a built (meta) model: sizes and the adapted layers."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    trainable_params: int
    total_params: int
    base_params: int  # frozen
    quantizable_params: int  # frozen linear weights bitsandbytes would store in 4 bits (not the LM head)
    largest_layer_params: int  # one decoder layer, what ZeRO-3 gathers at a time
    adapted: tuple[tuple[str, int, int], ...]  # per decoder layer: (module name, in_features, out_features)


def load_hf_config(path: str | Path) -> PretrainedConfig:
    """A Hugging Face ``config.json`` (file or model directory) -> its config class, without weights."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--model-config {path} does not exist: pass a Hugging Face config.json, "
                          "e.g. configs/models/llama-2-7b.json")
    raw = json.loads(file.read_text())
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise ConfigError(f"{file} has no model_type: it must be a Hugging Face config.json (e.g. \"llama\")")
    return AutoConfig.for_model(model_type, **raw)


def model_shape(hf_config: PretrainedConfig, adapter_cfg: AdapterConfig) -> ModelShape:
    """Build the model and its adapter on the meta device (no memory, no weights) and measure them."""
    counting_cfg = adapter_cfg.model_copy(update={"init": "gaussian"})  # pissa / loftq need real weights
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(hf_config)
        output_embeddings = base.get_output_embeddings()
        quantizable = sum(m.weight.numel() for m in base.modules()
                          if isinstance(m, torch.nn.Linear) and m is not output_embeddings)
        model = base if adapter_cfg.is_full else get_peft_model(base, peft_config(counting_cfg))
    if adapter_cfg.is_full:
        trainable = total = sum(p.numel() for p in model.parameters())  # a tied embedding is counted once
    else:
        trainable, total = model.get_nb_trainable_parameters()
    layers = _decoder_layers(model)
    adapted = tuple(
        (name.rsplit(".", 1)[-1], module.in_features, module.out_features)
        for name, module in layers[0].named_modules() if hasattr(module, "lora_A")
    )
    text = hf_config.get_text_config()
    heads = text.num_attention_heads
    return ModelShape(
        model_type=hf_config.model_type, num_layers=len(layers), hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", 4 * text.hidden_size), num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads, vocab_size=text.vocab_size,
        trainable_params=trainable, total_params=total, base_params=total - trainable,
        quantizable_params=quantizable,
        largest_layer_params=max(sum(p.numel() for p in layer.parameters()) for layer in layers),
        adapted=adapted,
    )


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks: the longest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no list of decoder layers: the planner needs a decoder LM")
    return list(max(lists, key=len))


def base_weight_bytes(shape: ModelShape, dtype: str, quantized: bool, double_quant: bool) -> int:
    if not quantized:
        return shape.base_params * DTYPE_BYTES[dtype]
    bits = FOUR_BIT_DOUBLE_QUANT_BITS if double_quant else FOUR_BIT_BITS
    other = shape.base_params - shape.quantizable_params
    return round(shape.quantizable_params * bits / 8) + other * DTYPE_BYTES[dtype]


def trainable_bytes_per_param(precision: str, optimizer: str, momentum: float) -> dict[str, int]:
    """Bytes per trainable parameter: weights, gradients, optimizer states (ZeRO paper's 2 + 2 + K)."""
    mixed = precision in ("bf16", "fp16")
    weight = 2 if mixed else 4
    master = 4 if mixed else 0  # fp32 copy the optimizer updates in mixed precision
    states = {"adamw": 8, "sgd": 4 if momentum > 0 else 0}[optimizer]  # AdamW: momentum + variance
    return {"weights": weight, "gradients": weight, "optimizer_states": master + states}


def activation_bytes(shape: ModelShape, micro_batch: int, seq_len: int, act_dtype_bytes: int,
                     adapter_cfg: AdapterConfig, gradient_checkpointing: bool) -> dict[str, int]:
    """Bytes autograd keeps from one forward pass for backward, op by op (Llama-style decoder, fused attention).

    Per layer, with T = micro_batch * seq_len tokens and a = bytes per activation:
      RMSNorm x2 (computes in fp32: saves its fp32 input and 1/rms):   2 * T * h * 4 + 2 * T * 4
      attention (q, k, v as fed to the kernel, its output, logsumexp):  (2 * h + 2 * kv) * T * a + T * heads * 4
      SwiGLU MLP (gate, silu(gate), up):                                 3 * T * i * a
      per adapted module: the input of lora_A (with dropout its own copy and the scaled noise mask, 2 * T * in * a)
      and lora_A's output (T * r * a); with DoRA also the base and LoRA outputs (2 * T * out * a), kept for the
      magnitude's gradient. Under full fine-tuning no adapter, but every linear layer's input (T * h * a for the
      attention, o_proj and MLP inputs, T * i * a for down_proj's), and the LM head's input once (T * h * a).
    Once: the logits (T * V * a), their fp32 log-softmax (T * V * 4), and the gradient of the log-softmax
    that backward allocates while it is still alive (T * V * 4). With gradient checkpointing forward keeps
    only each layer's input (T * h * a), and backward recomputes one layer at a time.
    """
    tokens = micro_batch * seq_len
    h, i, heads = shape.hidden_size, shape.intermediate_size, shape.num_heads
    kv = h // heads * shape.num_kv_heads
    norms = 2 * tokens * h * 4 + 2 * tokens * 4
    attention = (2 * h + 2 * kv) * tokens * act_dtype_bytes + tokens * heads * 4
    mlp = 3 * tokens * i * act_dtype_bytes
    adapter = 0
    shared_inputs: set[str] = set()
    for name, in_features, out_features in shape.adapted:
        adapter += tokens * adapter_cfg.r * act_dtype_bytes
        if adapter_cfg.dropout > 0:
            adapter += tokens * in_features * 2 * act_dtype_bytes  # dropout's output and its scaled noise
        else:
            shared_inputs.add(_input_group(name))
        if adapter_cfg.method == "dora":
            adapter += 2 * tokens * out_features * act_dtype_bytes  # base and LoRA outputs, for the magnitude
    if adapter_cfg.is_full:  # every linear weight trains: each input the four groups read is saved for its gradient
        shared_inputs = {"attn", "mlp", "o", "down"}
    for group in shared_inputs:  # without dropout, lora_A saves a tensor no frozen op had to keep
        adapter += tokens * (i if group == "down" else h) * act_dtype_bytes
    per_layer = norms + attention + mlp + adapter
    final_norm = tokens * shape.hidden_size * 4
    if adapter_cfg.is_full:  # a trained LM head saves its input, the final norm's output
        final_norm += tokens * shape.hidden_size * act_dtype_bytes
    log_softmax = tokens * shape.vocab_size * 4
    logits_grad = tokens * shape.vocab_size * 4
    if gradient_checkpointing:
        # forward keeps each layer's input; backward recomputes one layer at a time, after the logits' grad is gone
        layers = shape.num_layers * tokens * h * act_dtype_bytes
        backward_extra = max(logits_grad, per_layer)
    else:
        layers = shape.num_layers * per_layer
        backward_extra = logits_grad
    saved = layers + final_norm + log_softmax
    logits = tokens * shape.vocab_size * act_dtype_bytes
    return {"per_layer": per_layer, "saved_for_backward": saved, "logits": logits, "backward_extra": backward_extra,
            "total": saved + logits + backward_extra}


def _input_group(module_name: str) -> str:
    """Modules that read the same tensor: q/k/v the attention norm, gate/up the MLP norm."""
    return {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "gate_proj": "mlp", "up_proj": "mlp",
            "o_proj": "o", "down_proj": "down"}.get(module_name, module_name)


@dataclass(frozen=True)
class Setting:
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool

    @property
    def cost_rank(self) -> tuple[int, int]:
        """Cheaper first: offloading (host traffic every step) costs most, then ZeRO-3 (gathers every layer)."""
        return (int(self.offload_optimizer) + int(self.offload_params), self.zero_stage)


SETTINGS = [Setting(0, False, False), Setting(1, False, False), Setting(2, False, False), Setting(3, False, False),
            Setting(1, True, False), Setting(2, True, False), Setting(3, True, False), Setting(3, True, True)]


def per_gpu_bytes(setting: Setting, num_gpus: int, base_bytes: int, trainable: int, per_param: dict[str, int],
                  layer_bytes: int, activations: int) -> dict[str, int]:
    """GPU and CPU bytes on one rank for one ZeRO setting (ZeRO paper section 5, ZeRO-Offload section 4)."""
    n, stage = num_gpus, setting.zero_stage
    weights = trainable * per_param["weights"]
    grads = trainable * per_param["gradients"]
    states = trainable * per_param["optimizer_states"]
    base_gpu = base_bytes / n if stage == 3 else base_bytes
    weights_gpu = weights / n if stage == 3 else weights
    grads_gpu = grads / n if stage >= 2 else grads
    states_gpu = states / n if stage >= 1 else states
    gathered = 2 * layer_bytes if stage == 3 else 0
    cpu = 0.0
    if setting.offload_optimizer:
        cpu += grads_gpu + states_gpu
        grads_gpu = states_gpu = 0
    if setting.offload_params:
        cpu += base_gpu + weights_gpu
        base_gpu = weights_gpu = 0
    gpu = base_gpu + weights_gpu + grads_gpu + states_gpu + gathered + activations
    return {
        "base_weights": round(base_gpu), "adapter_weights": round(weights_gpu), "gradients": round(grads_gpu),
        "optimizer_states": round(states_gpu), "stage3_gathered_layers": round(gathered),
        "activations": activations, "gpu_total": round(gpu), "cpu_offloaded": round(cpu),
    }


def plan(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, train_cfg: TrainConfig, hf_config: PretrainedConfig,
         num_gpus: int = 1, gpu_memory_gib: float = 80.0, reserve_gib: float = RESERVE_GIB) -> dict[str, Any]:
    """The memory plan as a JSON-ready dict: counts, bytes, one row per ZeRO setting, a verdict."""
    if num_gpus < 1:
        raise ConfigError(f"--num-gpus must be at least 1 (got {num_gpus})")
    shape = model_shape(hf_config, adapter_cfg)
    quant = adapter_cfg.quant
    base_bytes = base_weight_bytes(shape, model_cfg.dtype, adapter_cfg.is_quantized, quant.double_quant)
    per_param = trainable_bytes_per_param(train_cfg.precision, train_cfg.optimizer, train_cfg.momentum)
    act_bytes = 2 if train_cfg.precision in ("bf16", "fp16") else DTYPE_BYTES[model_cfg.dtype]
    activations = activation_bytes(shape, train_cfg.micro_batch_size, model_cfg.max_seq_len, act_bytes, adapter_cfg,
                                   model_cfg.gradient_checkpointing)
    if adapter_cfg.is_full:  # nothing is frozen: ZeRO-3 gathers trained weights, at their training dtype
        layer_bytes = shape.largest_layer_params * per_param["weights"]
    else:
        layer_bytes = round(base_bytes * shape.largest_layer_params / max(shape.base_params, 1))
    budget = (gpu_memory_gib - reserve_gib) * GIB
    rows = []
    for setting in SETTINGS:
        row = {**asdict(setting), **per_gpu_bytes(setting, num_gpus, base_bytes, shape.trainable_params, per_param,
                                                   layer_bytes, activations["total"])}
        row["gpu_total_gib"] = round(row["gpu_total"] / GIB, 3)
        row["fits"] = row["gpu_total"] <= budget
        rows.append(row)
    ds = train_cfg.deepspeed
    by_setting = dict(zip(SETTINGS, rows, strict=True))
    configured = by_setting[Setting(ds.stage, ds.offload_optimizer, ds.offload_params)]
    fitting = [row for setting, row in sorted(by_setting.items(), key=lambda item: item[0].cost_rank) if row["fits"]]
    return {
        "model": {"model_type": shape.model_type, "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
                  "vocab_size": shape.vocab_size, "dtype": model_cfg.dtype, "max_seq_len": model_cfg.max_seq_len},
        "adapter": {"method": adapter_cfg.method, "r": adapter_cfg.r, "quantized_base": adapter_cfg.is_quantized,
                    "adapted_modules_per_layer": [name for name, _, _ in shape.adapted]},
        "trainable_params": shape.trainable_params,
        "total_params": shape.total_params,
        "trainable_percent": round(100 * shape.trainable_params / shape.total_params, 4),
        "bytes": {
            "base_weights": base_bytes,
            "base_weights_by_format": {
                **{d: base_weight_bytes(shape, d, False, False) for d in DTYPE_BYTES},
                "4bit": base_weight_bytes(shape, model_cfg.dtype, True, False),
                "4bit_double_quant": base_weight_bytes(shape, model_cfg.dtype, True, True),
            },
            "adapter_weights": shape.trainable_params * per_param["weights"],
            "gradients": shape.trainable_params * per_param["gradients"],
            "optimizer_states": shape.trainable_params * per_param["optimizer_states"],
            "optimizer": train_cfg.optimizer,
            "bytes_per_trainable_param": per_param,
            "activations": activations["total"],
            "activation_detail": activations,
            "micro_batch_size": train_cfg.micro_batch_size,
        },
        "num_gpus": num_gpus,
        "gpu_memory_gib": gpu_memory_gib,
        "reserve_gib": reserve_gib,
        "per_gpu": rows,
        "configured": configured,
        "verdict": "fits" if configured["fits"] else "does not fit",
        "cheapest_fitting": fitting[0] if fitting else None,
    }
