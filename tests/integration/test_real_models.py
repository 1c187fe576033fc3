"""Real model families train: Qwen2 with its ChatML template on 2 workers (Ray Train + DeepSpeed); a base given a
template with tokens it lacks trains their rows and its adapter reloads and generates anywhere; problems the
driver can see end `raylora train` with exit 2 naming the fix, before any Ray work.

    .venv/bin/python -m pytest tests/integration/test_real_models.py -q
The Llama 3 and Mistral families train on 2 workers in tests/integration/test_recipes.py (their recipes).
"""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from families import build_chat_and_base_families, with_few_eval_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.build import build_model
from adapters.io import load_adapter, save_adapter
from pipelines.artifacts import curated_manifest_path
from pipelines.cli import EXIT_USAGE, main
from pipelines.config import AdapterConfig, ModelConfig, validate_config
from pipelines.train import train
from pipelines.train.data import train_batches
from pipelines.train.evaluate import evaluate

NO_ANSWER_MARK = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no roles, no end of turn


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    return build_chat_and_base_families(tmp_path_factory.mktemp("families"), "mistral")


def family_config(demo_config_dict, base: str, **sections) -> dict:
    """The demo config on a family model: 2 workers, a few short steps, blocks the model can hold."""
    raw = dict(demo_config_dict)
    raw["model"] = {**raw["model"], "base": base, "max_seq_len": 256, **sections.pop("model", {})}
    raw["train"] = {**raw["train"], "max_steps": 3, "micro_batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0,
                    "eval_every": 3, "checkpoint_every": 3, "log_every": 1, "eval_generate_limit": 4,
                    "eval_max_new_tokens": 4}
    raw["cluster"] = {**raw["cluster"], "num_workers": 2, "cpus_per_worker": 0.5}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def eval_rows(manifest) -> list[dict]:
    return [row for path in manifest.eval_paths for row in pq.read_table(path).to_pylist()]


def test_qwen2_with_its_chatml_template_trains_on_two_workers(ray_train, demo_config_dict, curated_manifest,
                                                                family_dirs, tmp_path):
    cfg = validate_config(family_config(demo_config_dict, family_dirs["qwen2"], run_name="qwen2"))
    manifest = with_few_eval_rows(curated_manifest, tmp_path)
    result = train(cfg, manifest)
    assert result.metrics["step"] == 3 and result.metrics["train_loss"] > 0
    assert result.metrics["truncated_rows"] >= 0 and result.metrics["dropped_no_answer_rows"] == 0
    saved = AutoTokenizer.from_pretrained(result.adapter_path)
    assert saved.chat_template == AutoTokenizer.from_pretrained(family_dirs["qwen2"]).chat_template

    model = load_adapter(AutoModelForCausalLM.from_pretrained(family_dirs["qwen2"]), result.adapter_path)
    reloaded = evaluate(model, saved, eval_rows(manifest), seq_len=cfg.model.max_seq_len,
                        batch_size=cfg.train.micro_batch_size, max_new_tokens=4, generate_limit=0)
    assert reloaded["eval_loss"] == pytest.approx(result.metrics["eval_loss"], rel=1e-3)


def test_a_base_given_chatml_trains_the_new_token_rows_and_its_adapter_loads_and_generates_anywhere(
        family_dirs, curated_manifest, tmp_path):
    """Mistral's base has neither a template nor <|im_start|> <|im_end|>: the tokens are added, the embeddings
    and the untied LM head grow, their new rows train, and the adapter carries the tokenizer it needs."""
    model_cfg = ModelConfig(base=family_dirs["mistral-base"], chat_template="chatml")
    built = build_model(model_cfg, AdapterConfig(r=4, dropout=0.0))
    vocab = len(AutoTokenizer.from_pretrained(family_dirs["mistral-base"]))
    assert built.model.config.vocab_size == vocab + 2
    trainable = [name for name, p in built.model.named_parameters() if p.requires_grad and "trainable_tokens" in name]
    assert len(trainable) == 2, f"the new rows of the embeddings and of the untied LM head train: {trainable}"

    rows = pq.read_table(curated_manifest.train_paths[0]).to_pylist()[:64]
    batches = train_batches(rows, built.tokenizer, seq_len=128, micro_batch_size=4)
    optimizer = torch.optim.AdamW([p for p in built.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        batch = next(batches)
        built.model(**{k: batch[k] for k in ("input_ids", "labels", "position_ids")}).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    im_end = built.tokenizer.convert_tokens_to_ids("<|im_end|>")
    adapter_dir = save_adapter(built.model, tmp_path / "adapter", tokenizer=built.tokenizer)

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    reloaded = load_adapter(AutoModelForCausalLM.from_pretrained(family_dirs["mistral-base"]), adapter_dir).eval()
    built.model.eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in prompt["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.allclose(reloaded(**prompt).logits, built.model(**prompt).logits, atol=1e-5)
        trained_row = reloaded.get_input_embeddings()(torch.tensor([im_end]))
    assert torch.allclose(trained_row, built.model.get_input_embeddings()(torch.tensor([im_end])))
    out = reloaded.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]


DRIVER_PROBLEMS = [
    pytest.param({"model": {"base": "meta-llama/Meta-Llama-3-8B-Instruct"}},
                 r"not a local model directory, and the Hugging Face hub could not be reached", id="unreachable-hub"),
    pytest.param({"adapter": {"target_modules": ["wq", "wv"]}},
                 r"adapter.target_modules \['wq', 'wv'\] are not modules of llama: pick from .*q_proj", id="targets"),
    pytest.param({"model": {"base": "mistral-base"}}, r"has no chat template.*set model.chat_template", id="no-template"),
    pytest.param({"model": {"chat_template": NO_ANSWER_MARK}}, r"without a special end-of-turn token.*model.chat_template",
                 id="template-cannot-mask"),
    pytest.param({"model": {"max_seq_len": 4096}}, r"set model.max_seq_len=512 or less", id="sequence-too-long"),
]


@pytest.mark.parametrize(("sections", "fix"), DRIVER_PROBLEMS)
def test_problems_the_driver_can_see_exit_2_naming_the_fix(demo_config_dict, curated_manifest, family_dirs,
                                                           tmp_path, capsys, sections, fix):
    model = sections.get("model", {})
    if model.get("base") in family_dirs:
        sections = {**sections, "model": {**model, "base": family_dirs[model["base"]]}}
    raw = family_config(demo_config_dict, family_dirs["llama3"], **sections)
    curated_manifest.write(curated_manifest_path(validate_config(raw)))
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))

    assert main(["train", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    (message,) = [line for line in err.splitlines() if line.startswith("raylora train")]
    assert re.search(fix, message), err
    assert "Traceback" not in err
    assert not (tmp_path / "work" / "ray_results").exists(), "no Ray work started"
