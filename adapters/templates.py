"""Chat templates: the built-in ones, and ``model.chat_template`` (a name, a Jinja string or a file) applied to a
tokenizer.

    from adapters.templates import use_chat_template
    template = use_chat_template(tokenizer, "chatml")   # sets tokenizer.chat_template, adds <|im_start|> <|im_end|>

Base models ship without a template; instruct models ship their own, which ``model.chat_template`` overrides.
A template's special tokens that the tokenizer lacks are added to it as special tokens (``adapters.build``
then grows the embeddings and trains their rows). Built-ins: ``llama3`` renders as Meta-Llama-3-Instruct's
template; ``chatml`` as Qwen2-Instruct's without its default system prompt; ``mistral`` (Mistral-Instruct's
[INST] format) and ``alpaca`` (plain text for a base) put a system message in front of the first instruction
and close each answer with the tokenizer's EOS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja text
    special_tokens: tuple[str, ...]  # tokens the template writes that must be single special tokens


CHATML = ChatTemplate(
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    ("<|im_start|>", "<|im_end|>"),
)
LLAMA3 = ChatTemplate(
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)
# Mistral's [INST] format; its end of turn is the tokenizer's own EOS, so it adds no token.
MISTRAL = ChatTemplate(
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}",
    (),
)
# Plain text for a base model (Alpaca's prompt format); each answer ends with the tokenizer's EOS.
ALPACA = ChatTemplate(
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}",
    (),
)
BUILTIN_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "alpaca": ALPACA}
# In a template of the user's own, tokens written as <|name|> are taken as its special tokens (the
# ChatML / Llama 3 / Phi convention); any other marker it uses must already be in the tokenizer.
SPECIAL_TOKEN_PATTERN = re.compile(r"<\|[A-Za-z0-9_.\-]+\|>")


def resolve_chat_template(value: str) -> ChatTemplate:
    """``model.chat_template`` -> the template: a built-in name, a Jinja string, or a file holding one."""
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        source = value
    elif Path(value).is_file():
        source = Path(value).read_text()
    else:
        raise ConfigError(
            f"model.chat_template={value!r} is neither a built-in template nor a Jinja string nor an existing "
            f"file: use one of {', '.join(BUILTIN_TEMPLATES)}, a Jinja template, or a path to one")
    return ChatTemplate(source, tuple(dict.fromkeys(SPECIAL_TOKEN_PATTERN.findall(source))))


def use_chat_template(tokenizer: PreTrainedTokenizerBase, value: str) -> ChatTemplate:
    """Give ``tokenizer`` the template ``value`` names, adding the special tokens it lacks."""
    template = resolve_chat_template(value)
    tokenizer.chat_template = template.source
    # a token already in the vocabulary as plain text is registered as special too (keeping its id), so that
    # the tokenizer never splits it and decoding can skip it
    present = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    missing = [token for token in template.special_tokens if token not in present]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return template


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every special token's id: the named ones (BOS, EOS, ...) and every added token marked special."""
    added = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)
