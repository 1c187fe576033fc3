"""`raylora generate` and `raylora export` on a real small train run and its registered version: the answers are
the adapter's own (as plain PEFT and the registered model give them), the exports load with plain transformers
and PEFT and give the adapter's logits, a 4-bit (QLoRA) and a DoRA adapter merge, and an output directory is
never overwritten unless it holds an earlier export and --force says so.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/integration/test_generate_export.py -q
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.build import build_model, load_base, quantization_config
from adapters.export import EXPORT_FILE
from adapters.generation import generate_answers, load_adapter_model
from adapters.io import load_adapter, save_adapter, save_full_model
from adapters.merge import probe_batch
from pipelines.artifacts import TrainResult
from pipelines.cli import EXIT_OK, EXIT_USAGE, main
from pipelines.config import AdapterConfig, ModelConfig
from pipelines.train.data import end_of_turn_id

PROMPTS = ["What is 2 + 3?", "Reverse the word 'lamp'.", "What is the capital of Velmora?"]
MAX_NEW_TOKENS = 8  # register.max_new_tokens of the config below: what generate and the served model default to


@dataclass(frozen=True)
class Trained:
    config: Path  # the YAML that trained it (its own workdir and SQLite MLflow store)
    result: Path  # its TrainResult JSON
    adapter: Path
    base: Path  # the tiny base model's directory


@pytest.fixture(scope="module")
def trained(trained_lora, tiny_model_path) -> Trained:
    """The session's trained adapter, and a config file in its workdir that registers it as `to-use`."""
    raw = copy.deepcopy(trained_lora.config)
    raw["register"] = {**raw["register"], "model_name": "to-use", "max_new_tokens": MAX_NEW_TOKENS}
    config = Path(raw["workdir"]) / "use.yaml"
    config.write_text(yaml.safe_dump(raw))
    return Trained(config, trained_lora.result, trained_lora.adapter, Path(tiny_model_path))


@pytest.fixture(scope="module")
def registered(trained) -> str:
    """The run registered as version 1 of `to-use` in the config's SQLite store: the first champion."""
    assert main(["register", str(trained.config)]) == EXIT_OK
    return "to-use"


def printed_answers(out: str) -> list[str]:
    return [line.removeprefix("answer   ") for line in out.splitlines() if line.startswith("answer   ")]


def peft_answers(trained: Trained, prompts: list[str]) -> list[str]:
    """Greedy answers of the adapter on its base with plain transformers + PEFT, one batch, as a user writes it."""
    tokenizer = AutoTokenizer.from_pretrained(trained.adapter, padding_side="left")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained.base), trained.adapter).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id}))
    return [a.strip() for a in tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)]


@torch.no_grad()
def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.eval()(**batch).logits[batch["attention_mask"].bool()].float()


def reference_logits(trained: Trained, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained.base), trained.adapter), batch)


def test_generate_from_a_run_answers_each_prompt_as_plain_peft_does(trained, capsys):
    capsys.readouterr()
    argv = ["generate", str(trained.config), "--from", str(trained.result)]
    assert main([*argv, *(arg for p in PROMPTS for arg in ("--prompt", p))]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"train run trained-lora/{TrainResult.read(trained.result).fingerprint}" in out.splitlines()[0]
    assert [line.removeprefix("prompt   ") for line in out.splitlines() if line.startswith("prompt   ")] == PROMPTS
    answers = printed_answers(out)
    assert answers == peft_answers(trained, PROMPTS)
    assert any(answers), "a trained adapter answers something"


def test_generate_with_the_champion_answers_as_the_registered_model_predicts(trained, registered, tmp_path, capsys):
    from pipelines.config import load_config

    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS) + "\n")
    capsys.readouterr()
    assert main(["generate", str(trained.config), "--prompts-file", str(prompts_file)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"adapter  version 1 (alias champion) of {registered}")
    answers = printed_answers(out)

    # in a process of its own: mlflow.set_tracking_uri here would point every later test's MLflow at this store
    uri = load_config(trained.config).tracking_uri
    served = subprocess.run(
        [sys.executable, "-c", "import json, sys, mlflow; mlflow.set_tracking_uri(sys.argv[1]); "
         "mlflow.set_registry_uri(sys.argv[1]); "
         "print(json.dumps(mlflow.pyfunc.load_model(sys.argv[2]).predict(json.loads(sys.argv[3]))))",
         uri, f"models:/{registered}@champion", json.dumps(PROMPTS)],
        capture_output=True, text=True, timeout=300, check=False)
    assert served.returncode == 0, served.stderr[-3000:]
    assert answers == json.loads(served.stdout.splitlines()[-1])

    assert main(["generate", str(trained.config), "--version", "1", "--prompt", PROMPTS[0]]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"adapter  version 1 of {registered}")
    assert printed_answers(out) == answers[:1]


@pytest.mark.parametrize(("flags", "message"), [
    (["--alias", "nope"], "registered model 'to-use' has no alias 'nope'"),
    (["--version", "7"], "registered model 'to-use' has no version '7'"),
    (["--from", "/nowhere/train_result.json"], "--from /nowhere/train_result.json does not exist"),
])
def test_an_unknown_adapter_source_is_one_line_and_exit_2(trained, registered, capsys, flags, message):
    capsys.readouterr()
    assert main(["generate", str(trained.config), *flags, "--prompt", "hi"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_prompts_file_line_without_a_prompt_is_exit_2(trained, tmp_path, capsys):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text('{"prompt": "fine"}\nWhat is 2 + 3?\n')
    capsys.readouterr()
    assert main(["generate", str(trained.config), "--prompts-file", str(prompts_file)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"line 2 of {prompts_file}" in err and err.count("\n") == 1, err


def test_export_merged_loads_with_plain_transformers_and_gives_the_adapters_logits(trained, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", str(trained.config), "--from", str(trained.result), "--merged", str(out)]) == EXIT_OK
    assert f"merged   {out}" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config.use_cache, "served with its KV cache"
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(trained.adapter).chat_template
    batch = probe_batch(tokenizer)
    torch.testing.assert_close(logits(merged, batch), reference_logits(trained, batch), atol=1e-4, rtol=0)
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["kind"] == "merged" and record["merge"]["dequantized_base"] is False
    assert sorted(record["files"]) == sorted(p.name for p in out.iterdir() if p.name != EXPORT_FILE)


def test_export_adapter_from_the_registry_loads_with_plain_peft(trained, registered, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert main(["export", str(trained.config), "--alias", "champion", "--adapter", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert f"adapter  version 1 (alias champion) of {registered}" in printed and "--lora-modules" in printed
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    batch = probe_batch(tokenizer)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained.base), out)
    torch.testing.assert_close(logits(reloaded, batch), reference_logits(trained, batch), atol=0, rtol=0)


@pytest.mark.parametrize("method", ["qlora", "dora"])
def test_a_4bit_and_a_dora_adapter_merge(trained, tmp_path, method, capsys):
    """An adapter directory made here (one real step, so B is not zero) loads on CONFIG's base as CONFIG's
    adapter section says. QLoRA merges into the dequantised 4-bit base, deq(Q(W)) + BA, which the 4-bit model
    computes as deq(Q(W)) x + B(A x): the same up to float rounding (about 1e-5 here, float32). Its bound is
    looser, 1e-3, for the 4-bit kernels that dequantise in blocks; LoRA's and DoRA's is 1e-4."""
    adapter_cfg = AdapterConfig(method=method, target_modules="all-linear")
    model_cfg = ModelConfig(base=str(trained.base))
    built = build_model(model_cfg, adapter_cfg)
    input_ids = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    built.model.train()
    built.model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.AdamW([p for p in built.model.parameters() if p.requires_grad], lr=1e-2).step()
    adapter = save_adapter(built.model, tmp_path / "adapter", tokenizer=built.tokenizer)

    out = tmp_path / "merged"
    assert main(["export", str(trained.config), "--from", str(adapter), "--merged", str(out),
                 f"adapter.method={method}"]) == EXIT_OK
    assert f"adapter.method={method}" in capsys.readouterr().out
    assert json.loads((out / EXPORT_FILE).read_text())["merge"]["dequantized_base"] is (method == "qlora")
    batch = probe_batch(built.tokenizer)
    unmerged = logits(load_adapter(load_base(model_cfg, adapter_cfg), adapter), batch)
    merged = logits(AutoModelForCausalLM.from_pretrained(out), batch)
    torch.testing.assert_close(merged, unmerged, atol=1e-3 if method == "qlora" else 1e-4, rtol=0)


def test_a_full_fine_tuned_model_generates_exports_merged_and_refuses_an_adapter_export(trained, tmp_path, capsys):
    """adapter.method=full saves a whole model (one real step here, so it differs from the base): it loads as a
    plain transformers model, `generate` answers with it, `export --merged` copies it, `export --adapter` is one
    line and exit 2."""
    built = build_model(ModelConfig(base=str(trained.base)), AdapterConfig(method="full"))
    input_ids = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    built.model.train()
    built.model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.AdamW(built.model.parameters(), lr=1e-2).step()
    full_dir = save_full_model(built.model, tmp_path / "full", tokenizer=built.tokenizer)
    model, tokenizer = load_adapter_model(str(trained.base), full_dir)
    assert not isinstance(model, PeftModel)
    batch = probe_batch(built.tokenizer)
    expected = logits(model, batch)
    torch.testing.assert_close(expected, logits(built.model, batch), atol=1e-5, rtol=0)

    capsys.readouterr()
    from_full = ["--from", str(full_dir), "adapter.method=full"]
    assert main(["generate", str(trained.config), *from_full, "--prompt", PROMPTS[0]]) == EXIT_OK
    assert printed_answers(capsys.readouterr().out) == generate_answers(model, tokenizer, PROMPTS[:1],
                                                                       max_new_tokens=MAX_NEW_TOKENS)

    assert main(["export", str(trained.config), *from_full, "--adapter", str(tmp_path / "adapter")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no adapter to export; use --merged" in err, err
    assert not (tmp_path / "adapter").exists()

    out = tmp_path / "merged"
    assert main(["export", str(trained.config), *from_full, "--merged", str(out)]) == EXIT_OK
    assert f"AutoModelForCausalLM.from_pretrained({str(out)!r})" in capsys.readouterr().out
    assert json.loads((out / EXPORT_FILE).read_text())["kind"] == "merged"
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out), batch), expected, atol=0, rtol=0)


def test_an_output_directory_is_replaced_only_when_it_holds_an_earlier_export_and_force_says_so(trained, tmp_path,
                                                                                                capsys):
    export = ["export", str(trained.config), "--from", str(trained.adapter), "--adapter"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    capsys.readouterr()
    for force in ([], ["--force"]):
        assert main([*export, str(foreign), *force]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(foreign) in err, err
        assert ("is not empty" in err and "--force" in err) if not force else "files no export wrote" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # a directory nothing can be written in (a read-only file system refuses root too): one line, not a traceback
    assert main([*export, "/sys/raylora-export"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("raylora export: /sys cannot be written (") and err.count("\n") == 1, err
    assert err.endswith("): export to a directory you can write\n")

    earlier = tmp_path / "earlier"
    assert main([*export, str(earlier)]) == EXIT_OK
    assert main([*export, str(earlier)]) == EXIT_USAGE
    assert "is not empty" in capsys.readouterr().err
    (earlier / "adapter_model.safetensors").write_bytes(b"stale")
    assert main([*export, str(earlier), "--force"]) == EXIT_OK
    assert (earlier / "adapter_model.safetensors").read_bytes() == (trained.adapter / "adapter_model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*.partial"))


def test_a_qdora_adapter_loads_for_answers_with_the_logits_it_was_trained_with(trained, tmp_path):
    """``load_adapter_model`` (what `raylora generate` and the registered pyfunc use) keeps bitsandbytes' standard
    4-bit layout: on a CPU with AVX512-BF16 the first eval forward would otherwise repack the weights, and DoRA's
    weight norm would read the repacked bytes from the second forward on."""
    adapter_cfg = AdapterConfig(method="dora", quantize_base=True, target_modules="all-linear")
    model_cfg = ModelConfig(base=str(trained.base))
    built = build_model(model_cfg, adapter_cfg)
    input_ids = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    built.model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.AdamW([p for p in built.model.parameters() if p.requires_grad], lr=1e-2).step()
    adapter = save_adapter(built.model, tmp_path / "adapter", tokenizer=built.tokenizer)

    batch = probe_batch(built.tokenizer)
    expected = logits(load_adapter(load_base(model_cfg, adapter_cfg), adapter), batch)
    model, _ = load_adapter_model(str(trained.base), adapter, quantization=quantization_config(adapter_cfg))
    for _ in range(2):  # the repacking happens during the first forward
        torch.testing.assert_close(logits(model, batch), expected, atol=1e-4, rtol=0)
