"""Full fine-tuning (``adapter.method=full``) through the user's door: two Ray Train workers under ZeRO-3, then
the saved model registered (the registered pyfunc loads through ``load_adapter_model``, checked here).

    .venv/bin/python -m pytest tests/integration/test_full_finetune.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from adapters.generation import load_adapter_model
from pipelines.artifacts import curated_manifest_path
from pipelines.cli import EXIT_OK, main
from pipelines.config import validate_config
from pipelines.train.evaluate import evaluate

TINY_TRAIN = {"max_steps": 2, "micro_batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0, "eval_every": 2,
              "checkpoint_every": 2, "log_every": 1, "eval_generate_limit": 2, "eval_max_new_tokens": 2,
              "deepspeed": {"stage": 3}}


def test_full_fine_tuning_under_zero3_trains_every_weight_and_saves_a_whole_model(
        ray_train, demo_config_dict, curated_manifest, tiny_model_path, tmp_path, capsys):
    raw = {**demo_config_dict, "train": {**demo_config_dict["train"], **TINY_TRAIN},
           "model": {**demo_config_dict["model"], "max_seq_len": 128},
           "cluster": {**demo_config_dict["cluster"], "num_workers": 2, "cpus_per_worker": 0.5},
           "register": {**demo_config_dict["register"], "model_name": "full"}}
    config = tmp_path / "full.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = validate_config(raw)
    curated_manifest.write(curated_manifest_path(cfg))  # what `raylora curate` would have written

    assert main(["train", str(config), "adapter.method=full"]) == EXIT_OK

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert f"full fine-tuning, {base.num_parameters():,} of {base.num_parameters():,} params trainable" in (
        capsys.readouterr().out)
    (result_file,) = Path(cfg.workdir, "train", cfg.run_name).glob("*/train_result.json")
    result = json.loads(result_file.read_text())
    assert result["config"]["adapter"]["method"] == "full"
    assert result["metrics"]["step"] == 2 and math.isfinite(result["metrics"]["eval_loss"])

    trained_dir = Path(result["adapter_path"])
    assert not (trained_dir / "adapter_config.json").exists()
    assert (trained_dir / "model.safetensors").is_file() and (trained_dir / "tokenizer.json").is_file()
    model, tokenizer = load_adapter_model(str(tiny_model_path), trained_dir)
    assert not isinstance(model, PeftModel)
    trained = model.state_dict()
    for name, weight in base.state_dict().items():
        assert trained[name].shape == weight.shape, name
        assert not torch.equal(trained[name], weight), f"{name} did not change"

    rows = [row for path in curated_manifest.eval_paths for row in pq.read_table(path).to_pylist()]
    reloaded = evaluate(model, tokenizer, rows, seq_len=cfg.model.max_seq_len, batch_size=4, max_new_tokens=2,
                        generate_limit=0)
    assert reloaded["eval_loss"] == pytest.approx(result["metrics"]["eval_loss"], rel=1e-3)

    # register: the gate measures the whole model on the fixed eval set, as training measured it
    assert main(["register", str(config), "adapter.method=full"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "registered full version 1" in out
    assert f"eval_loss {result['metrics']['eval/eval/loss']:.4g}" in out  # the gate set is data.eval_sets' eval.jsonl
