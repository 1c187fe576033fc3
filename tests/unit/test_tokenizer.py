"""The counting tokenizer curation's Ray workers use renders and counts exactly as training's, without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from families import build_chat_and_base_families

from adapters.tokenizer import load_counting_tokenizer, load_tokenizer
from pipelines.config import ModelConfig
from pipelines.errors import ConfigError

CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort 9 2 5."},
     {"role": "assistant", "content": "2 5 9"}, {"role": "user", "content": "Und jetzt rückwärts? <|im_end|>"},
     {"role": "assistant", "content": "9 5 2 — fertig.\n\n  Done."}],
]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    return build_chat_and_base_families(tmp_path_factory.mktemp("families"), "llama3")


@pytest.mark.parametrize(("family", "chat_template"), [("llama3", None), ("qwen2", None), ("llama3-base", "chatml"),
                                                       ("llama3-base", "alpaca"), ("qwen2", "llama3")])
def test_counting_tokenizer_counts_as_training_does(family_dirs, family, chat_template):
    model = ModelConfig(base=family_dirs[family], chat_template=chat_template)
    training, counting = load_tokenizer(model), load_counting_tokenizer(model)
    expected = training.apply_chat_template(CONVERSATIONS, tokenize=True, return_dict=False)
    assert counting.apply_chat_template(CONVERSATIONS, tokenize=True, return_dict=False) == expected
    assert counting.pad_token == training.pad_token


def test_counting_tokenizer_of_the_tiny_model_counts_as_training_does(tiny_model_path):
    model = ModelConfig(base=str(tiny_model_path))
    expected = load_tokenizer(model).apply_chat_template(CONVERSATIONS, tokenize=True, return_dict=False)
    assert load_counting_tokenizer(model).apply_chat_template(CONVERSATIONS, tokenize=True,
                                                              return_dict=False) == expected


def test_a_base_without_a_template_names_the_fix(family_dirs):
    with pytest.raises(ConfigError, match="model.chat_template"):
        load_counting_tokenizer(ModelConfig(base=family_dirs["llama3-base"]))


def test_counting_tokenizer_never_imports_torch(tiny_model_path):
    """Curation's workers load it: torch, PEFT and bitsandbytes cost each one ~10 s and ~1 GiB."""
    script = ("import sys\nfrom adapters.tokenizer import load_counting_tokenizer\nfrom pipelines.config import "
              f"ModelConfig\nload_counting_tokenizer(ModelConfig(base={str(tiny_model_path)!r}))\n"
              "print(sorted(m for m in ('torch', 'peft', 'bitsandbytes') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
