"""Eval sets hold conversations or plain text: a ``{"text": ...}`` row is measured as pretraining saw it (no
chat template, every token after the first counted) and never generated from."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.errors import ConfigError
from pipelines.train.data import IGNORE_INDEX, tokenize_text
from pipelines.train.driver import read_eval_sets
from pipelines.train.evaluate import evaluate

TEXT = "The capital of Zentovtov is Xanpel."
CHAT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]


def test_an_eval_set_reads_conversations_and_plain_text_and_names_the_fix_for_neither(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"id": "t1", "text": TEXT}) + "\n" + json.dumps({"messages": CHAT}) + "\n")
    assert read_eval_sets([str(path)]) == {"mixed": [{"id": "t1", "text": TEXT},
                                                     {"id": "mixed:2", "messages": CHAT}]}
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(ConfigError, match=r"line 1 has no 'messages' list and no 'text'.*\{\"text\": \"...\"\}"):
        read_eval_sets([str(path)])


def test_plain_text_starts_with_bos_and_every_later_token_carries_a_label(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    example = tokenize_text(TEXT, tokenizer)
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(example.input_ids[1:]).replace(" ", "") == TEXT.replace(" ", "")
    assert example.labels == [IGNORE_INDEX, *example.input_ids[1:]]


def test_the_loss_of_a_text_row_is_the_language_model_loss_and_it_is_never_generated_from(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = torch.tensor([tokenize_text(TEXT, tokenizer).input_ids])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()  # transformers' shifted mean over all but the first
    text_only = evaluate(model, tokenizer, [{"id": "t", "text": TEXT}], seq_len=128, batch_size=2,
                         max_new_tokens=2, generate_limit=None)
    assert text_only["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert "eval_exact_match" not in text_only
    mixed = evaluate(model, tokenizer, [{"id": "t", "text": TEXT}, {"id": "c", "messages": CHAT}], seq_len=128,
                     batch_size=2, max_new_tokens=2, generate_limit=1)
    assert mixed["eval_exact_match"] in (0.0, 1.0)  # the one conversation was scored, the text row was not
