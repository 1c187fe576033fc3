"""The offline tiny base model: a Llama-architecture causal LM and a byte-level BPE tokenizer.

    raylora demo-assets configs/demo.yaml

No model hub is reachable here, so raylora builds its own base: the tokenizer is trained locally
with ``tokenizers``, the model is a few-million-parameter ``LlamaForCausalLM`` (module names
``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`` as in Llama), briefly pretrained on a
text corpus with a fixed seed, and both are saved with ``save_pretrained`` so that
``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load
them like any hub model. The build is cached under ``RAYLORA_CACHE`` (default ``~/.cache/raylora``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_VERSION = "v1"  # bump when the architecture, tokenizer or pretraining recipe changes
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|system|>", "<|user|>", "<|assistant|>"]
# `{% generation %}` marks the assistant's tokens, so `return_assistant_tokens_mask=True`
# gives the loss mask for training on responses only.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
ARCHITECTURE = dict(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    hidden_act="silu",
)


def cache_dir() -> Path:
    return Path(os.environ.get("RAYLORA_CACHE", Path.home() / ".cache" / "raylora"))


def tiny_model_dir(corpus_digest: str) -> Path:
    """Where the tiny model for one corpus lives; the digest keys the cache to the exact corpus."""
    return cache_dir() / f"tiny-llama-{TINY_VERSION}-{corpus_digest[:12]}"


def corpus_digest(corpus: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([TINY_VERSION, ARCHITECTURE, list(corpus)]).encode())
    return digest.hexdigest()


def build_tokenizer(corpus: Sequence[str], vocab_size: int = ARCHITECTURE["vocab_size"]) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``corpus``; digits are split one per token so arithmetic is learnable."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[3:], model_max_length=ARCHITECTURE["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _packed_blocks(tokenizer: PreTrainedTokenizerFast, corpus: Sequence[str], block: int) -> torch.Tensor:
    ids: list[int] = []
    for line in corpus:
        ids += [tokenizer.bos_token_id, *tokenizer(line, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def pretrain(model: LlamaForCausalLM, blocks: torch.Tensor, steps: int, batch_size: int = 32,
             lr: float = 3e-3, seed: int = 0) -> list[float]:
    """A short causal-LM pretraining run (AdamW, cosine decay); returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def build_tiny_model(corpus: Sequence[str], out_dir: str | Path | None = None, steps: int = 600,
                     seed: int = 0, block: int = 64) -> Path:
    """Train the tokenizer, pretrain the model on ``corpus``, save both. Cached: returns at once if built."""
    out = Path(out_dir) if out_dir else tiny_model_dir(corpus_digest(corpus))
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    torch.manual_seed(seed)
    started = time.perf_counter()
    tokenizer = build_tokenizer(corpus)
    config = LlamaConfig(**ARCHITECTURE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    losses = pretrain(model, _packed_blocks(tokenizer, corpus, block), steps=steps, seed=seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # write to a temp dir and rename, so a build killed halfway never looks cached
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretraining.json").write_text(json.dumps({
        "steps": steps, "seed": seed, "block": block, "first_loss": losses[0], "final_loss": losses[-1],
        "seconds": round(time.perf_counter() - started, 1), "parameters": model.num_parameters(),
    }, indent=2))
    if out.exists():
        shutil.rmtree(tmp)  # another process finished the same build first
    else:
        tmp.rename(out)
    return out
