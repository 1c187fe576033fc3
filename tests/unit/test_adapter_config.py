"""The adapter section: defaults, presets, and the impossible combinations refused before launch."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from adapters.build import QV_TARGETS, peft_config, quantization_config, target_modules
from pipelines.config import AdapterConfig, apply_overrides, validate_config
from pipelines.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _demo(overrides: list[str]):
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    return validate_config(apply_overrides(raw, overrides))


def test_alpha_defaults_to_twice_the_rank():
    assert AdapterConfig(r=16).lora_alpha == 32
    assert AdapterConfig(r=16, alpha=8).lora_alpha == 8


def test_target_presets_resolve():
    assert target_modules(AdapterConfig(target_modules="qv")) == QV_TARGETS
    assert target_modules(AdapterConfig(target_modules="all-linear")) == "all-linear"
    assert target_modules(AdapterConfig(target_modules=["o_proj"])) == ["o_proj"]


def test_peft_config_carries_every_setting():
    cfg = peft_config(AdapterConfig(method="dora", r=4, dropout=0.1, use_rslora=True, modules_to_save=["lm_head"]))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora, cfg.use_dora) == (4, 8, 0.1, True, True)
    assert cfg.init_lora_weights == "gaussian" and cfg.modules_to_save == ["lm_head"]
    assert peft_config(AdapterConfig(init="pissa")).init_lora_weights == "pissa"


def test_quantization_config_only_for_a_4bit_base():
    assert quantization_config(AdapterConfig()) is None
    q = quantization_config(AdapterConfig(method="dora", quantize_base=True,
                                          quant={"quant_type": "fp4", "double_quant": False,
                                                 "compute_dtype": "bfloat16", "quant_storage": "bfloat16"}))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant
    assert str(q.bnb_4bit_compute_dtype) == "torch.bfloat16" and str(q.bnb_4bit_quant_storage) == "torch.bfloat16"


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (dict(init="loftq"), "use adapter.method=qlora"),
        (dict(method="dora", init="loftq", quantize_base=True), "use adapter.init=gaussian"),
        (dict(method="dora", init="pissa"), "use adapter.init=gaussian"),
        (dict(method="qlora", init="pissa"), "adapter.init=loftq with a 4-bit base"),
        (dict(method="lora", quantize_base=True, init="pissa"), "adapter.quantize_base=false"),
        (dict(target_modules=[]), "target_modules is empty"),
    ],
)
def test_impossible_adapter_settings_name_the_fix(adapter, message):
    with pytest.raises(ValidationError, match=message):
        AdapterConfig(**adapter)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter.method=qlora", "train.deepspeed.stage=3"], "set adapter.quant.quant_storage=float32"),
        (["adapter.method=qlora", "train.deepspeed.stage=3", "adapter.quant.compute_dtype=bfloat16",
          "adapter.quant.quant_storage=bfloat16"], "set adapter.quant.compute_dtype=float32"),
        (["adapter.method=dora", "adapter.quantize_base=true", "train.deepspeed.stage=3"], "quant_storage=float32"),
    ],
)
def test_4bit_base_under_zero3_needs_one_dtype(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _demo(overrides)


def test_qdora_and_loftq_qlora_are_valid():
    assert _demo(["adapter.method=dora", "adapter.quantize_base=true"]).adapter.is_quantized
    assert _demo(["adapter.method=qlora", "adapter.init=loftq"]).adapter.init == "loftq"
    cfg = _demo(["model.dtype=bfloat16", "adapter.method=qlora", "train.deepspeed.stage=3",
                 "adapter.quant.compute_dtype=bfloat16", "adapter.quant.quant_storage=bfloat16"])
    assert cfg.adapter.quant.quant_storage == cfg.model.dtype
