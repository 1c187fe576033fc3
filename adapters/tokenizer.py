"""The tokenizer and chat template that render every conversation, loadable without torch.

    from adapters.tokenizer import load_tokenizer, load_counting_tokenizer
    tokenizer = load_tokenizer(cfg.model)            # training, eval, the saved adapter (transformers' AutoTokenizer)
    counter = load_counting_tokenizer(cfg.model)     # curation's length filter: the same files, no torch import

One rule, ``with_chat_template``, gives either tokenizer its template: ``model.chat_template`` when set (its
missing special tokens added), else the model's own, else a ConfigError naming the fix; and pads with EOS
when the model defines no pad token (Llama's does not). Curation's Ray workers only count tokens, so they
read the model's ``tokenizer.json`` through transformers' torch-free backend: importing torch, PEFT and
bitsandbytes there would cost each worker ~10 s and ~1 GiB for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.templates import BUILTIN_TEMPLATES, use_chat_template
from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pipelines.config import ModelConfig


def with_chat_template(tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """``tokenizer`` given the chat template that renders every conversation, and a pad token."""
    if model_cfg.chat_template is not None:
        use_chat_template(tokenizer, model_cfg.chat_template)
    elif not tokenizer.chat_template:
        raise ConfigError(f"model.base={model_cfg.base} has no chat template (a base model): set "
                          f"model.chat_template to one of {', '.join(BUILTIN_TEMPLATES)}, a Jinja string or a file")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The base model's tokenizer (``AutoTokenizer``, which imports torch) with its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_cfg.base, revision=model_cfg.revision,
                                              trust_remote_code=model_cfg.trust_remote_code)
    return with_chat_template(tokenizer, model_cfg)


def load_counting_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The same tokenizer read from the model's ``tokenizer.json`` by transformers' Rust-backed class, which
    does not import torch; it renders and counts as ``load_tokenizer``'s does. A model that ships no
    ``tokenizer.json`` (a slow tokenizer only) gets ``load_tokenizer``'s."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    try:
        tokenizer = TokenizersBackend.from_pretrained(model_cfg.base, revision=model_cfg.revision)
    except (OSError, ValueError, TypeError):  # no tokenizer.json to read: the full loader converts what there is
        return load_tokenizer(model_cfg)
    return with_chat_template(tokenizer, model_cfg)
