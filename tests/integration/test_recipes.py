"""Every real-model recipe in configs/ (demo.yaml is tested on its own) plans offline and trains a few steps on
CPU, on 2 workers.

    .venv/bin/python -m pytest tests/integration/test_recipes.py -q

``model.base`` points at a small random model of the recipe's family (the family read from the config.json
that ``model.config_file`` names), carrying a chat template only where the real model ships one; data,
workdir, tracking and cluster point at the sample data, a temp dir, the SQLite store and CPU workers, and
blocks are short. Everything else is the recipe's own: adapter method and quantisation, ZeRO stage and
offload, its DeepSpeed file, precision, gradient checkpointing, chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from families import build_family, with_few_eval_rows
from transformers import AutoTokenizer

from pipelines.cli import EXIT_FAILURE, EXIT_OK, main
from pipelines.config import validate_config
from pipelines.train import train

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "demo.yaml")
FAMILY_OF_MODEL_TYPE = {"llama": "llama3", "mistral": "mistral", "qwen2": "qwen2"}


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


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_plan_works_offline_from_the_recipes_model_config_file(recipe, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # recipes name their files relative to the repository, as they are run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", str(recipe.relative_to(REPO))]) in (EXIT_OK, EXIT_FAILURE)  # fits, or does not
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"]["config_source"] == yaml.safe_load(recipe.read_text())["model"]["config_file"]
    assert plan["model"]["num_layers"] == 32 and plan["model"]["hidden_size"] == 4096


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_the_recipe_trains_on_cpu_with_a_small_model_of_its_family(recipe, ray_local, demo_config_dict,
                                                                   curated_manifest, tmp_path):
    model = yaml.safe_load(recipe.read_text())["model"]
    model_type = json.loads((REPO / model["config_file"]).read_text())["model_type"]
    base = build_family(FAMILY_OF_MODEL_TYPE[model_type], tmp_path / "base",
                        chat_template="chat_template" not in model)
    cfg = validate_config(recipe_on_cpu(recipe, demo_config_dict, base))
    result = train(cfg, with_few_eval_rows(curated_manifest, tmp_path))
    assert result.metrics["step"] == 2 and result.metrics["train_loss"] > 0 and result.metrics["eval_loss"] > 0
    assert AutoTokenizer.from_pretrained(result.adapter_path).chat_template, "the adapter carries its template"
