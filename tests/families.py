"""Small random models of three real families, with tokenizers that carry chat templates of their shapes.

    from families import FAMILIES, build_family, with_few_eval_rows
    path = build_family("llama3", tmp_dir)     # LlamaForCausalLM + a Llama-3-Instruct-style tokenizer

No hub here, so the models real users bring are stood in for by what makes them differ for training:
the architecture class, the tokenizer kind (byte-level BPE for Llama 3 and Qwen2, sentencepiece-style
Metaspace BPE for Mistral), the special tokens, and the chat template, written after the one each model
ships with (Meta-Llama-3-Instruct's header template, Qwen2-Instruct's ChatML with its default system
prompt, Mistral-7B-Instruct-v0.1's [INST] template, which refuses system messages). None of the templates
has ``{% generation %}`` marks. Weights are random (hidden 64, 2 layers): a few seconds to build, no cache.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


@dataclass(frozen=True)
class Family:
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    chat_template: str | None
    metaspace: bool  # sentencepiece-style pieces ("▁word") instead of byte-level BPE
    tie_word_embeddings: bool = False


FAMILIES = {
    "llama3": Family(LlamaConfig, LlamaForCausalLM,
                     ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None,
                     chat_template=LLAMA3_TEMPLATE, metaspace=False),
    "qwen2": Family(Qwen2Config, Qwen2ForCausalLM, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN2_TEMPLATE,
                    metaspace=False, tie_word_embeddings=True),
    "mistral": Family(MistralConfig, MistralForCausalLM, ("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>",
                      pad=None, chat_template=MISTRAL_TEMPLATE, metaspace=True),
}


def corpus() -> list[str]:
    """Text in the shape of the sample data, so that the tokenizers split it into sensible pieces."""
    lines = ["You are a precise assistant. Answer with the result only.", "Please help.", "Be brief.",
             "[INST] [/INST]", string.printable]
    lines += [f"What is {a} + {b}? {a + b}" for a in range(10) for b in range(10)]
    lines += [f"What comes after {n}? After {n} comes {n + 1}." for n in range(100)]
    lines += [f"Sort {n % 7} {n % 3} {n % 5}. Reverse q w e. The capital of Venra is Tovpelquo." for n in range(50)]
    return lines


def build_tokenizer(family: Family, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>" if family.metaspace else None))
    if family.metaspace:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.Metaspace(prepend_scheme="first")])
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet: list[str] = []
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.special_tokens),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    named = {"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad,
             "unk_token": "<unk>" if family.metaspace else None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=SIZE["max_position_embeddings"],
                                   **{key: value for key, value in named.items() if value is not None},
                                   additional_special_tokens=[t for t in family.special_tokens
                                                              if t not in named.values()])
    fast.chat_template = family.chat_template
    return fast


def build_family(name: str, out_dir: str | Path, chat_template: bool = True) -> Path:
    """Save a random model of the family and its tokenizer (without a chat template: a base model)."""
    family, out = FAMILIES[name], Path(out_dir)
    tokenizer = build_tokenizer(family)
    if not chat_template:
        tokenizer.chat_template = None
    torch.manual_seed(0)
    ids = {f"{role}_token_id": tokenizer.convert_tokens_to_ids(token)
           for role, token in (("bos", family.bos), ("eos", family.eos), ("pad", family.pad)) if token}
    config = family.config_class(vocab_size=len(tokenizer), tie_word_embeddings=family.tie_word_embeddings,
                                 **SIZE, **ids)
    family.model_class(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def with_few_eval_rows(manifest, out_dir: str | Path, rows: int = 16):
    """The manifest with only the first ``rows`` eval rows: a short run's eval costs seconds, not a minute."""
    path = Path(out_dir) / "eval-head.parquet"
    pq.write_table(pq.read_table(manifest.eval_paths[0]).slice(0, rows), path)
    return dataclasses.replace(manifest, eval_paths=[str(path)], num_eval=rows)


def build_chat_and_base_families(root: Path, base_family: str) -> dict[str, str]:
    """Llama 3 and Qwen2 with their chat templates, and ``<base_family>-base`` without one, under ``root``."""
    dirs = {name: str(build_family(name, root / name)) for name in ("llama3", "qwen2")}
    dirs[f"{base_family}-base"] = str(build_family(base_family, root / f"{base_family}-base", chat_template=False))
    return dirs
