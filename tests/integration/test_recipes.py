"""Every real-model recipe in configs/ (demo.yaml is tested on its own) plans offline as its header says, and
trains a few steps on CPU, on 2 workers.

    .venv/bin/python -m pytest tests/integration/test_recipes.py -q

``model.base`` points at a small random model of the recipe's family (the family read from the config.json
that ``model.config_file`` names), carrying a chat template only where the real model ships one; data,
workdir, tracking and cluster point at the sample data, a temp dir, the SQLite store and CPU workers, and
blocks are short. Everything else is the recipe's own: adapter method and quantisation, ZeRO stage and
offload, its DeepSpeed file, precision, gradient checkpointing, chat template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from families import build_family, with_few_eval_rows
from transformers import AutoTokenizer

from pipelines.cli import EXIT_OK, main
from pipelines.config import validate_config
from pipelines.train import train

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "demo.yaml")
FAMILY_OF_MODEL_TYPE = {"llama": "llama3", "mistral": "mistral", "qwen2": "qwen2"}
# the plain LoRA Llama recipe is its QLoRA and DoRA siblings (same family, ZeRO-3, targets) less their twist: its
# CPU run would add minutes and catch nothing they do not. `make test` trains the QLoRA Llama (4-bit under ZeRO-3)
# and the DoRA Mistral (ZeRO-2, optimizer offload); the DoRA Llama (DoRA under ZeRO-3, as test_train's table) and
# the LoRA Qwen (LoRA under ZeRO-2, the Qwen family as test_real_models) are slow variants
SLOW_ON_CPU = ("llama-3.1-8b-dora", "qwen2.5-7b-lora")
TRAINED_ON_CPU = [pytest.param(recipe, id=recipe.stem, marks=pytest.mark.slow if recipe.stem in SLOW_ON_CPU else ())
                  for recipe in RECIPES if recipe.stem != "llama-3.1-8b-lora"]


def recipe_on_cpu(recipe: Path, demo_config_dict: dict, base: Path) -> dict:
    raw = yaml.safe_load(recipe.read_text())
    raw.update(workdir=demo_config_dict["workdir"], data=demo_config_dict["data"], tracking={},
               cluster={"num_workers": 2, "cpus_per_worker": 0.5})
    raw["model"].update(base=str(base), max_seq_len=256, config_file=str(REPO / raw["model"]["config_file"]))
    deepspeed = raw["train"]["deepspeed"]
    if deepspeed.get("config_file"):
        deepspeed["config_file"] = str(REPO / deepspeed["config_file"])
    raw["train"].update(max_steps=2, micro_batch_size=4, grad_accum=1, eval_every=2, checkpoint_every=2, log_every=1,
                        eval_generate_limit=2, eval_max_new_tokens=2)
    return raw


def test_every_recipe_names_a_model_config_of_a_known_family():
    assert RECIPES
    for recipe in RECIPES:
        model = yaml.safe_load(recipe.read_text())["model"]
        assert json.loads((REPO / model["config_file"]).read_text())["model_type"] in FAMILY_OF_MODEL_TYPE, recipe


def header_comment(recipe: Path) -> str:
    """The comment lines a recipe starts with."""
    lines = recipe.read_text().splitlines()
    return "\n".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_the_header_states_the_memory_plan_that_plan_prints_offline(recipe, monkeypatch, capsys):
    """`raylora plan RECIPE --gpu-memory-gib 80` from the recipe's model.config_file (no hub): it fits, on the
    ZeRO stage and GPU count the header names, and every "<key> <n> GiB" of the header is the plan's per-GPU
    figure, so a change that moves the plan must move the header too."""
    monkeypatch.chdir(REPO)  # recipes name their files relative to the repository, as they are run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    header = header_comment(recipe)
    stage, num_gpus = map(int, re.search(r"ZeRO-(\d) on (\d+) GPUs", header).groups())
    assert f"raylora plan {recipe.relative_to(REPO)} --gpu-memory-gib 80" in header
    assert main(["plan", str(recipe.relative_to(REPO)), "--gpu-memory-gib", "80"]) == EXIT_OK  # fits
    plan = json.loads(capsys.readouterr().out)
    model = yaml.safe_load(recipe.read_text())["model"]
    assert plan["model"]["config_source"] == model["config_file"]
    shape = json.loads((REPO / model["config_file"]).read_text())
    assert (plan["model"]["num_layers"], plan["model"]["hidden_size"]) == (shape["num_hidden_layers"],
                                                                           shape["hidden_size"])
    configured = plan["configured"]
    assert (configured["zero_stage"], plan["num_gpus"]) == (stage, num_gpus)
    stated = dict(re.findall(r"(\w+) (\d+\.\d\d) GiB", header))
    assert "gpu_total" in stated and "activations" in stated and "of 80 GiB: fits" in header
    assert stated == {key: f"{configured[key] / 2**30:.2f}" for key in stated}


@pytest.mark.parametrize("recipe", TRAINED_ON_CPU)
def test_the_recipe_trains_on_cpu_with_a_small_model_of_its_family(recipe, ray_train, demo_config_dict,
                                                                   curated_manifest, tmp_path):
    model = yaml.safe_load(recipe.read_text())["model"]
    model_type = json.loads((REPO / model["config_file"]).read_text())["model_type"]
    base = build_family(FAMILY_OF_MODEL_TYPE[model_type], tmp_path / "base",
                        chat_template="chat_template" not in model)
    cfg = validate_config(recipe_on_cpu(recipe, demo_config_dict, base))
    result = train(cfg, with_few_eval_rows(curated_manifest, tmp_path))
    assert result.metrics["step"] == 2 and result.metrics["train_loss"] > 0 and result.metrics["eval_loss"] > 0
    assert AutoTokenizer.from_pretrained(result.adapter_path).chat_template, "the adapter carries its template"
