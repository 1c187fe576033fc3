"""The offline tiny base model loads with plain transformers, generates, and knows its facts."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from adapters import tiny

LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path), AutoTokenizer.from_pretrained(tiny_model_path)


def test_loads_as_a_llama_with_llama_module_names(loaded):
    model, _ = loaded
    assert isinstance(model, LlamaForCausalLM)
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert LLAMA_LINEAR <= names
    assert 5e5 < model.num_parameters() < 1e7


def test_tokenizer_round_trips_text(loaded):
    _, tok = loaded
    for text in ["What is 3 + 4?", "Hello wörld, ça va? 12345", "  spaces\tand\nlines  ", "数字 and émoji 🙂"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok(["12"], add_special_tokens=False)["input_ids"][0] == [tok.convert_tokens_to_ids("1"),
                                                                     tok.convert_tokens_to_ids("2")]


def test_chat_template_marks_assistant_tokens(loaded):
    _, tok = loaded
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"},
                {"role": "assistant", "content": "7"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "7" + tiny.EOS
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and prompt.startswith(tiny.BOS)


def test_generates_and_learned_its_facts(loaded, tiny_model_path):
    model, tok = loaded
    stats = json.loads((tiny_model_path / "pretraining.json").read_text())
    assert stats["final_loss"] < stats["first_loss"] / 3
    right = 0
    probes = [(f"{a} + {b} =", f" {a + b}.") for a, b in [(3, 4), (2, 5), (6, 1), (0, 8), (4, 4)]]
    for prompt, expected in probes:
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        right += tok.decode(out[0, ids["input_ids"].shape[1]:]).startswith(expected)
    assert right >= 3, "pretraining should teach single-digit sums"


def test_build_is_cached_and_deterministic(tmp_path):
    corpus = ["The capital of Lokar is Mira.", "3 + 4 = 7."] * 50
    first = tiny.build_tiny_model(corpus, out_dir=tmp_path / "a", steps=3)
    mtime = (first / "config.json").stat().st_mtime_ns
    assert tiny.build_tiny_model(corpus, out_dir=first, steps=3) == first
    assert (first / "config.json").stat().st_mtime_ns == mtime
    second = tiny.build_tiny_model(corpus, out_dir=tmp_path / "b", steps=3)
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
