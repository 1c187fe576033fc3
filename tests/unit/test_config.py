from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from pipelines.cli import main
from pipelines.config import (
    RayloraConfig,
    apply_overrides,
    load_config,
    parse_override,
    validate_config,
)
from pipelines.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# configs/studies/ holds study files, not run configs: tests/unit/test_study.py validates them by their own schema
ALL_YAML = sorted(p for p in (REPO / "configs").glob("**/*.yaml") if p.parent.name != "studies")
ALL_DEEPSPEED_JSON = sorted((REPO / "configs" / "deepspeed").glob("*.json"))


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_in_configs_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, RayloraConfig)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#"), f"{path.name} must start with a comment naming the command that runs it"
    assert "raylora" in path.read_text().split("\n\n")[0], f"{path.name}: the header must show the raylora command"


def test_configs_exist():
    assert (REPO / "configs" / "demo.yaml") in ALL_YAML
    assert len(ALL_YAML) >= 3


@pytest.mark.parametrize("path", ALL_DEEPSPEED_JSON, ids=lambda p: p.name)
def test_deepspeed_json_files_parse(path):
    import json

    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] in (0, 1, 2, 3)


def test_demo_defaults():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.model.base == "tiny"
    assert cfg.adapter.lora_alpha == 2 * cfg.adapter.r
    assert cfg.tracking_uri.startswith("sqlite:///") and cfg.tracking_uri.endswith("mlflow.db")
    assert cfg.cluster.address is None


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("adapter.r=16", ["adapter", "r"], 16),
        ("train.lr=1e-4", ["train", "lr"], 1e-4),
        ("adapter.use_rslora=true", ["adapter", "use_rslora"], True),
        ("adapter.target_modules=[q_proj,v_proj]", ["adapter", "target_modules"], ["q_proj", "v_proj"]),
        ("model.base=meta-llama/Llama-2-7b-hf", ["model", "base"], "meta-llama/Llama-2-7b-hf"),
        ("tune.max_concurrent_trials=2", ["tune", "max_concurrent_trials"], 2),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("bad", ["adapter.r", "=3", "adapter..r=3", "a.b=[unclosed"])
def test_malformed_override_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="override"):
        parse_override(bad)


def test_overrides_apply_and_validate():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["adapter.r=16", "train.deepspeed.stage=3", "adapter.alpha=8"])
    assert cfg.adapter.r == 16 and cfg.adapter.lora_alpha == 8
    assert cfg.train.deepspeed.stage == 3


def test_override_does_not_mutate_the_input():
    raw = {"adapter": {"r": 4}}
    apply_overrides(raw, ["adapter.r=8"])
    assert raw == {"adapter": {"r": 4}}


def _demo_raw():
    return yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["curate.bogus=1"], "curate.bogus: unknown key"),
        (["adapter.rr=3"], "did you mean 'r'"),
        (["adapter.r=zero"], "adapter.r"),
        (["adapter.r=0"], "adapter.r"),
        (["adapter.method=lorax"], "adapter.method"),
        (["train.deepspeed.stage=5"], "train.deepspeed.stage"),
        (["adapter.method=qlora", "train.deepspeed.stage=3"], "set adapter.quant.quant_storage=float32"),
        (["adapter.init=loftq"], "use adapter.method=qlora"),
        (["adapter.method=dora", "adapter.init=pissa"], "use adapter.init=gaussian"),
        (["cluster.use_gpu=true"], "cluster.gpus_per_worker"),
        (["train.precision=fp16"], "fp16 needs GPUs"),
        (["train.deepspeed.offload_params=true"], "train.deepspeed.stage=3"),
        (["train.deepspeed.stage=0", "train.deepspeed.offload_optimizer=true"], "train.deepspeed.stage=1, 2 or 3"),
        (["adapter.target_modules=[]"], "target_modules is empty"),
        (["adapter.method=full", "adapter.quantize_base=true"], "set adapter.quantize_base=false"),
        (["adapter.method=full", "adapter.init=pissa"], "adapter.init=pissa initialises LoRA weights"),
        (["adapter.method=full", "adapter.init=loftq"], "set adapter.init=gaussian (or use adapter.method=lora)"),
        (["adapter.method=full", "adapter.modules_to_save=[lm_head]"], "set adapter.modules_to_save=[]"),
        (["run_name=has space"], "run_name"),
        (["data.sources=[]"], "data.sources"),
    ],
)
def test_bad_configs_name_the_key_and_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_config(apply_overrides(_demo_raw(), overrides))
    assert message in str(err.value)


def test_qlora_zero3_with_matching_storage_is_valid():
    cfg = validate_config(apply_overrides(_demo_raw(), [
        "adapter.method=qlora", "train.deepspeed.stage=3", "adapter.quant.quant_storage=float32"]))
    assert cfg.adapter.is_quantized


@pytest.mark.parametrize("stage", [2, 3])
def test_full_fine_tuning_is_valid_under_zero_2_and_3(stage):
    cfg = validate_config(apply_overrides(_demo_raw(), ["adapter.method=full", f"train.deepspeed.stage={stage}"]))
    assert cfg.adapter.is_full
    assert not cfg.adapter.is_quantized
    assert cfg.adapter.label == "full fine-tuning"  # no rank in the progress line: full fine-tuning has none


@pytest.mark.parametrize(("overrides", "label"), [
    ([], "lora r=8"),
    (["adapter.method=dora", "adapter.r=16"], "dora r=16"),
])
def test_an_adapter_is_named_with_its_rank(overrides, label):
    assert validate_config(apply_overrides(_demo_raw(), overrides)).adapter.label == label


def test_missing_data_section_names_it():
    with pytest.raises(ConfigError, match="data: required"):
        validate_config({})


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {base: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_config_round_trips_as_a_plain_dict():
    cfg = load_config(REPO / "configs" / "llama-3.1-8b-qlora.yaml")
    assert RayloraConfig.model_validate(cfg.model_dump()) == cfg


def _sections_in(annotation: Any) -> list[type[BaseModel]]:
    """The section models an annotation holds: itself, or inside list[...], X | Y, dict[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _sections_in(arg)]


def _every_section(model: type[BaseModel], found: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    found[model.__name__] = model
    for field in model.model_fields.values():
        for section in _sections_in(field.annotation):
            _every_section(section, found)
    return found


def test_every_key_of_every_section_has_a_description():
    sections = _every_section(RayloraConfig, {})
    # the walk reaches sections nested in sections and in lists, so a key added anywhere is checked
    assert {"ModelConfig", "DataSource", "QuantConfig", "DeepSpeedConfig", "ClusterConfig"} <= set(sections)
    undescribed = [f"{name}.{key}" for name, model in sections.items()
                   for key, field in model.model_fields.items() if not (field.description or "").strip()]
    assert undescribed == []


def test_config_explain_shows_value_default_and_description(capsys):
    code = main(["config", str(REPO / "configs" / "demo.yaml"), "train.lr=1e-4", "--explain"])
    out = capsys.readouterr().out
    assert code == 0
    # each row: [*], key, value, default, description words
    rows = {cells[1] if cells[0] == "*" else cells[0]: cells for cells in map(str.split, out.splitlines()) if cells}
    assert rows["train.lr"][:4] == ["*", "train.lr", "0.0001", "0.0002"]
    assert "peak learning rate" in " ".join(rows["train.lr"])
    assert rows["adapter.r"][:3] == ["adapter.r", "8", "8"]  # demo.yaml keeps the default rank: not marked
    assert "rank of the low-rank update" in " ".join(rows["adapter.r"])
    assert rows["train.max_steps"][:4] == ["*", "train.max_steps", "100", "null"]  # set by the YAML itself
    assert rows["data.sources[0].path"][1:3] == [".raylora/data/alpaca.jsonl", "(required)"]
    assert rows["train.deepspeed.stage"][:3] == ["train.deepspeed.stage", "2", "2"]
