"""Response-only loss under any chat template: Llama 3, Qwen2 (ChatML), Mistral [INST], the built-ins, the tiny
model's own; templates that cannot mask are refused naming the fix; packing is checked; truncation counted."""

from __future__ import annotations

import pytest
import torch
from families import build_family
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.build import load_tokenizer, template_token_ids
from adapters.templates import CHATML, resolve_chat_template
from pipelines.config import ModelConfig
from pipelines.errors import ConfigError
from pipelines.train.data import (
    IGNORE_INDEX,
    Example,
    PackingStats,
    end_of_turn_id,
    pack_examples,
    tokenize_chat,
    train_batches,
)
from pipelines.train.packing_check import packing_isolates

SYSTEM = {"role": "system", "content": "Be brief."}
Q1, A1 = {"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}
Q2, A2 = {"role": "user", "content": "What comes after 41?"}, {"role": "assistant", "content": "After 41 comes 42."}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    dirs = {name: str(build_family(name, root / name)) for name in ("llama3", "qwen2", "mistral")}
    dirs["llama3-base"] = str(build_family("llama3", root / "llama3-base", chat_template=False))
    return dirs


def tokenizer_for(family_dirs, name: str, chat_template: str | None = None):
    return load_tokenizer(ModelConfig(base=family_dirs[name], chat_template=chat_template))


def answer_runs(example: Example, tokenizer) -> list[str]:
    """The labelled tokens, decoded run by run (one run per assistant turn when the mask is right)."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in [*runs, *([current] if current else [])]]


# (family, model.chat_template, conversation, the answer runs that carry loss): exactly the assistant tokens and
# each turn's end-of-turn token, nothing of the prompt, the headers, or what the template writes after the turn
CASES = [
    pytest.param("llama3", None, [Q1, A1], ["7<|eot_id|>"], id="llama3-one-turn"),
    pytest.param("llama3", None, [SYSTEM, Q1, A1, Q2, A2], ["7<|eot_id|>", "After 41 comes 42.<|eot_id|>"],
                 id="llama3-multi-turn-system"),
    pytest.param("qwen2", None, [Q1, A1], ["7<|im_end|>"], id="qwen2-default-system-prompt"),
    pytest.param("qwen2", None, [SYSTEM, Q1, A1, Q2, A2], ["7<|im_end|>", "After 41 comes 42.<|im_end|>"],
                 id="qwen2-multi-turn-system"),
    pytest.param("mistral", None, [Q1, A1, Q2, A2], ["7</s>", "After 41 comes 42.</s>"], id="mistral-multi-turn"),
    pytest.param("mistral", "mistral", [SYSTEM, Q1, A1, Q2, A2], ["7</s>", "After 41 comes 42.</s>"],
                 id="builtin-mistral-with-system"),
    pytest.param("llama3-base", "llama3", [SYSTEM, Q1, A1, Q2, A2], ["7<|eot_id|>", "After 41 comes 42.<|eot_id|>"],
                 id="builtin-llama3-on-a-base"),
    pytest.param("llama3-base", "alpaca", [Q1, A1, Q2, A2], ["7<|eot_id|>", "After 41 comes 42.<|eot_id|>"],
                 id="builtin-alpaca-on-a-base"),
    pytest.param("mistral", "chatml", [SYSTEM, Q1, A1, Q2, A2], ["7<|im_end|>", "After 41 comes 42.<|im_end|>"],
                 id="builtin-chatml-adds-its-tokens"),
]


@pytest.mark.parametrize(("family", "chat_template", "messages", "answers"), CASES)
def test_exactly_the_answers_and_their_end_of_turn_carry_loss(family_dirs, family, chat_template, messages, answers):
    tokenizer = tokenizer_for(family_dirs, family, chat_template)
    example = tokenize_chat(messages, tokenizer)
    assert answer_runs(example, tokenizer) == answers
    assert example.labels[0] == IGNORE_INDEX


def test_the_mask_equals_the_generation_marks_mask_of_the_tiny_models_template(tiny_model_path):
    """The tiny model's template marks its answers with {% generation %}: turn-by-turn masking gives the same."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    conversations = [[Q1, A1], [SYSTEM, Q1, A1, Q2, A2], [Q1, {"role": "assistant", "content": ""}],
                     [SYSTEM, {"role": "user", "content": "Reverse q w e."}, {"role": "assistant", "content": "e w q"}]]
    for messages in conversations:
        marked = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=True)
        expected = [tok if keep else IGNORE_INDEX for tok, keep in zip(marked["input_ids"], marked["assistant_masks"],
                                                                       strict=True)]
        expected[0] = IGNORE_INDEX
        example = tokenize_chat(messages, tokenizer)
        assert example.input_ids == list(marked["input_ids"]) and example.labels == expected


def test_a_template_that_renders_earlier_turns_differently_later_is_refused_naming_the_fix(family_dirs):
    # the system message goes before the last user message (as some Mistral templates do): rendering the
    # conversation up to the first answer puts it elsewhere than the whole conversation does
    moving_system = ("{% for m in messages %}{% if m['role'] == 'user' %}{% if loop.last or loop.revindex == 2 %}"
                     "{{ messages[0]['content'] }}{% endif %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
                     "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    tokenizer = tokenizer_for(family_dirs, "mistral", moving_system)
    with pytest.raises(ConfigError, match=r"not render turn 2 as a prefix.*model.chat_template"):
        tokenize_chat([SYSTEM, Q1, A1, Q2, A2], tokenizer)


def test_a_template_that_cannot_render_the_conversation_names_the_fix(family_dirs):
    tokenizer = tokenizer_for(family_dirs, "mistral")  # Mistral-Instruct-v0.1's template refuses system messages
    with pytest.raises(ConfigError, match=r"roles must alternate.*set model.chat_template"):
        tokenize_chat([SYSTEM, Q1, A1], tokenizer)


def test_a_base_without_a_template_names_model_chat_template(family_dirs):
    with pytest.raises(ConfigError, match=r"has no chat template.*set model.chat_template"):
        tokenizer_for(family_dirs, "llama3-base")


def test_chat_template_takes_a_name_a_jinja_string_or_a_file(family_dirs, tmp_path):
    path = tmp_path / "chatml.jinja"
    path.write_text(CHATML.source)
    for value in ("chatml", CHATML.source, str(path)):
        assert resolve_chat_template(value) == CHATML
    with pytest.raises(ConfigError, match=r"model.chat_template='chatlm' is neither.*chatml, llama3, mistral"):
        resolve_chat_template("chatlm")


def test_a_templates_missing_special_tokens_are_added_and_their_rows_trained(family_dirs):
    tokenizer = tokenizer_for(family_dirs, "mistral", "chatml")
    plain = AutoTokenizer.from_pretrained(family_dirs["mistral"])
    assert len(tokenizer) == len(plain) + 2
    model_cfg = ModelConfig(base=family_dirs["mistral"], chat_template="chatml")
    ids = template_token_ids(model_cfg, tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|im_start|>", "<|im_end|>"] and min(ids) >= len(plain)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "", "decoding skips them as special tokens"
    assert template_token_ids(ModelConfig(base=family_dirs["qwen2"]), plain) == [], "the model's own template: none"


@pytest.mark.parametrize("family", ["llama3", "qwen2", "mistral"])
def test_packing_isolation_is_checked_on_the_model(family_dirs, family, monkeypatch):
    """The check passes on the installed stack, and catches a stack that ignores packed position ids."""
    import transformers.masking_utils

    tokenizer = tokenizer_for(family_dirs, family, "mistral" if family == "mistral" else None)
    model = AutoModelForCausalLM.from_pretrained(family_dirs[family])
    assert packing_isolates(model, tokenizer)
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    assert not packing_isolates(model, tokenizer)


def test_an_example_cut_before_its_answer_is_dropped_and_counted():
    answered_late = Example(input_ids=list(range(10)), labels=[IGNORE_INDEX] * 8 + [8, 9])
    answered_early = Example(input_ids=list(range(10)), labels=[IGNORE_INDEX, 1] + [IGNORE_INDEX] * 8)
    stats = PackingStats()
    blocks = list(pack_examples([answered_late, answered_early], seq_len=6, pad_id=0, packing=False, stats=stats))
    assert len(blocks) == 1 and blocks[0].labels[1] == 1
    assert (stats.examples, stats.truncated, stats.dropped_no_answer) == (2, 2, 1)
    kept = list(pack_examples([answered_late], seq_len=6, pad_id=0, drop_no_answer=False))
    assert len(kept) == 1, "eval keeps it: every rank runs the same forward passes"


def test_train_batches_refuse_when_truncation_leaves_no_answer(family_dirs):
    tokenizer = tokenizer_for(family_dirs, "qwen2")
    rows = [{"id": f"r{i}", "messages": [SYSTEM, Q1, A1]} for i in range(4)]
    with pytest.raises(ConfigError, match=r"every train example loses all its answer tokens.*model.max_seq_len"):
        list(train_batches(rows, tokenizer, seq_len=12, micro_batch_size=1))


def test_the_template_marks_the_end_of_turn_that_generation_stops_at(family_dirs):
    expected = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "mistral": "</s>"}
    for family, token in expected.items():
        tokenizer = tokenizer_for(family_dirs, family)
        assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == token


def test_a_model_that_fails_the_packing_check_trains_unpacked_over_a_schedule_for_the_longer_epoch(
        demo_config_dict):
    from types import SimpleNamespace

    from pipelines.config import validate_config
    from pipelines.train.engine import lr_multiplier
    from pipelines.train.packing_check import stretch_schedule, without_packing

    cfg = validate_config({**demo_config_dict, "train": {**demo_config_dict["train"], "warmup_ratio": 0.1}})
    unpacked = without_packing(cfg, announce=True)
    assert cfg.train.packing and not unpacked.train.packing
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    engine = SimpleNamespace(lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier("cosine", 1, 10)))
    stretch_schedule(engine, unpacked, total_steps=40)
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        engine.lr_scheduler.step()
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0], "warmup over 10% of the new length"
    assert rates[20] > 0.4 and rates[-1] < 0.01, "cosine decay over all 40 steps, not the first 10"
