"""The train stage's DeepSpeed config, optimizers and learning-rate schedules, without Ray or workers."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.config import validate_config
from pipelines.errors import ConfigError
from pipelines.train.engine import build_optimizer, deepspeed_config, lr_multiplier


def _cfg(demo_config_dict, **train):
    raw = dict(demo_config_dict)
    raw["train"] = {**raw["train"], **train}
    raw["cluster"] = {**raw["cluster"], "num_workers": 2}
    return validate_config(raw)


def test_values_the_pipeline_owns_override_the_deepspeed_file(demo_config_dict, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "reduce_bucket_size": 123},
                                "train_micro_batch_size_per_gpu": 99, "gradient_clipping": 5.0,
                                "bf16": {"enabled": True}}))
    cfg = _cfg(demo_config_dict, micro_batch_size=4, grad_accum=3, max_grad_norm=0.5,
               deepspeed={"stage": 3, "config_file": str(path), "offload_optimizer": True})
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["reduce_bucket_size"] == 123
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}


@pytest.mark.parametrize(("name", "deepspeed"), [
    ("zero2.json", {"stage": 2}),
    ("zero3.json", {"stage": 3}),
    ("zero3_offload.json", {"stage": 3, "offload_optimizer": True, "offload_params": True}),
])
def test_the_shipped_deepspeed_files_are_usable_as_they_are(demo_config_dict, name, deepspeed):
    from tests.conftest import REPO

    path = str(REPO / "configs" / "deepspeed" / name)
    ds = deepspeed_config(_cfg(demo_config_dict, deepspeed={**deepspeed, "config_file": path}))
    assert "auto" not in json.dumps(ds), "every 'auto' value is filled in from the config"
    assert ds["zero_optimization"]["stage"] == deepspeed["stage"]


def test_a_deepspeed_file_that_disagrees_with_the_config_names_the_fix(demo_config_dict):
    from tests.conftest import REPO

    offload = str(REPO / "configs" / "deepspeed" / "zero3_offload.json")
    with pytest.raises(ConfigError, match=r"set train.deepspeed.stage=3"):
        deepspeed_config(_cfg(demo_config_dict, deepspeed={"stage": 2, "config_file": offload}))
    with pytest.raises(ConfigError, match=r"set train.deepspeed.offload_optimizer=true"):
        deepspeed_config(_cfg(demo_config_dict, deepspeed={"stage": 3, "config_file": offload}))


def test_a_deepspeed_file_that_sets_the_optimizer_is_refused_naming_the_fix(demo_config_dict, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="train.optimizer"):
        deepspeed_config(_cfg(demo_config_dict, deepspeed={"config_file": str(path)}))
    with pytest.raises(ConfigError, match="does not exist"):
        deepspeed_config(_cfg(demo_config_dict, deepspeed={"config_file": str(tmp_path / "nope.json")}))


def test_schedules_warm_up_then_follow_their_shape():
    cosine, linear, constant = (lr_multiplier(name, 10, 110) for name in ("cosine", "linear", "constant"))
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0, abs=1e-9)
    assert linear(60) == pytest.approx(0.5) and linear(110) == pytest.approx(0.0)
    assert constant(100) == 1.0


def test_sgd_uses_momentum_and_adamw_is_the_default(demo_config_dict):
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, _cfg(demo_config_dict, optimizer="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    assert isinstance(build_optimizer(params, _cfg(demo_config_dict)), torch.optim.AdamW)


def test_raylora_train_without_a_curated_dataset_says_to_curate_first(demo_config_dict, tmp_path, capsys):
    import yaml

    from pipelines.cli import EXIT_FAILURE, main

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    assert main(["train", str(config)]) == EXIT_FAILURE
    assert f"run `raylora curate {config}` first" in capsys.readouterr().err
