"""Training data for the train stage: chat-template tokenisation, response-only loss masks (for any template),
packing, batches.

Plain functions over plain rows (``{"id", "messages"}`` dicts) and the examples tokenised from them, so they
run the same inside a Ray Train worker (examples from the prepared dataset, ``prepared.py``) and without Ray
(rows from a Parquet file):

    from pipelines.train.data import tokenize_chat, pack_examples, batches
    examples = (tokenize_chat(row["messages"], tokenizer) for row in rows)
    for batch in batches(pack_examples(examples, seq_len=256), micro_batch_size=8): ...

A packed block holds several examples back to back; ``position_ids`` restart at 0 for each example and
the model is called without an attention mask, so transformers builds a block-diagonal causal mask from
the position ids (``masking_utils.find_packed_sequence_indices``): no attention crosses examples.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from adapters.templates import special_token_ids
from pipelines.errors import ConfigError

IGNORE_INDEX = -100  # labels with this value are left out of the loss (the PyTorch / transformers convention)
MODEL_INPUTS = ("input_ids", "labels", "position_ids")
T = TypeVar("T")


@dataclass
class Example:
    """One tokenised conversation: ``labels`` is ``IGNORE_INDEX`` wherever the loss must not look."""

    input_ids: list[int]
    labels: list[int]
    row_id: str = ""  # the curated row it came from


@dataclass
class PackingStats:
    """Counts for the packing efficiency: real (non-pad) tokens over all tokens in the emitted blocks."""

    examples: int = 0
    truncated: int = 0  # longer than a block: cut to it
    dropped_no_answer: int = 0  # of those, cut before any answer token: left out, nothing to learn from
    real_tokens: int = 0
    total_tokens: int = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0


def truncation_metrics(stats: PackingStats) -> dict[str, float]:
    """Rows cut to the block length, and rows left out because the cut took every answer token, summed over
    ranks: every rank must call it."""
    import torch.distributed as dist

    counts = torch.tensor([stats.truncated, stats.dropped_no_answer], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(counts)
    return {"truncated_rows": counts[0].item(), "dropped_no_answer_rows": counts[1].item()}


@dataclass
class Block:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)  # the rows packed into it, in order


TEMPLATE_FIX = ("set model.chat_template to a template that renders each turn after the ones before it and "
                "closes each answer with a special token (chatml, llama3, mistral, alpaca, or your own), or train "
                "on every token with train.train_on_responses_only=false")
# A two-turn conversation: every template renders it, and its answer ends with the template's end-of-turn token.
PROBE = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it (the text; tokenise it without adding
    special tokens, as the template writes them)."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as err:
        raise ConfigError(f"the chat template cannot render a conversation with roles "
                          f"{[m['role'] for m in messages]} ({err}): set model.chat_template to one that "
                          "renders it (chatml, llama3, mistral, alpaca, or your own)") from err


def answer_spans(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant turn, the characters that turn adds after its generation
    prompt: the conversation up to the turn is rendered with the generation prompt, then with the turn.

    This needs no ``{% generation %}`` marks, so any template works whose rendering is stable: the prompt is
    a prefix of the turn, and the conversation up to each turn a prefix of the whole. A template that writes
    earlier turns differently once later ones follow is refused, since its answer tokens are not defined.
    """
    text = render(tokenizer, messages)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant" or turn == 0:  # an opening assistant turn answers no prompt
            continue
        prompt = render(tokenizer, messages[:turn], generation_prompt=True)
        through = render(tokenizer, messages[:turn + 1])
        if not (through.startswith(prompt) and text.startswith(through)):
            raise ConfigError(f"the chat template does not render turn {turn} as a prefix of the conversation, "
                              f"so its answer tokens cannot be found: {TEMPLATE_FIX}")
        spans.append((len(prompt), len(through)))
    return text, spans


def answer_mask(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[bool]]:
    """The conversation's token ids, and which of them are answer tokens: in each assistant turn, from the
    first token after the generation prompt to the turn's last special token (its end of turn), so that the
    model learns to stop; what a template writes after that (a newline) belongs to no one's answer.

    A token that straddles the start of a turn (a merge across it) goes with the prompt.
    """
    if not tokenizer.is_fast:
        raise ConfigError("response-only loss needs the token offsets that only a fast tokenizer (tokenizer.json) "
                          "gives: use a model that ships one, or set train.train_on_responses_only=false")
    text, spans = answer_spans(messages, tokenizer)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts = encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
    special = special_token_ids(tokenizer)
    mask = [False] * len(ids)
    for span_start, span_end in spans:
        first = bisect.bisect_left(starts, span_start)
        past = bisect.bisect_left(starts, span_end)
        closing = [k for k in range(first, past) if ids[k] in special]
        if not closing:
            raise ConfigError("the chat template ends an assistant turn without a special end-of-turn token, so "
                              f"the model would never learn where an answer stops: {TEMPLATE_FIX}")
        mask[first:closing[-1] + 1] = [True] * (closing[-1] + 1 - first)
    return ids, mask


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token the template closes an answer with (generation stops there)."""
    ids, mask = answer_mask(PROBE, tokenizer)
    return ids[max(k for k, is_answer in enumerate(mask) if is_answer)]


def tokenize_chat(messages: list[dict], tokenizer: PreTrainedTokenizerBase, responses_only: bool = True) -> Example:
    """Render with the tokenizer's chat template; with ``responses_only`` only the answer tokens carry labels
    (``answer_mask``: each assistant turn's tokens and its end-of-turn token, for any template).

    The first token never carries a label, so a packed example is never predicted from its neighbour.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if responses_only:
        ids, mask = answer_mask(messages, tokenizer)
        labels = [tok if is_answer else IGNORE_INDEX for tok, is_answer in zip(ids, mask, strict=True)]
    else:
        ids = tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]
        labels = list(ids)
    labels[0] = IGNORE_INDEX
    return Example(input_ids=list(ids), labels=labels)


def tokenize_text(text: str, tokenizer: PreTrainedTokenizerBase) -> Example:
    """Plain text as a base model was pretrained on it: no chat template, the tokenizer's own special tokens
    (BOS), every token but the first carrying a label. What an eval set of ``{"text": ...}`` rows measures."""
    ids = tokenizer(text)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]  # a tokenizer whose post-processor adds none: documents start with it
    return Example(input_ids=list(ids), labels=[IGNORE_INDEX, *ids[1:]])


def eval_example(row: dict, tokenizer: PreTrainedTokenizerBase, responses_only: bool = True) -> Example:
    """An eval row tokenised: a conversation through the chat template, or plain text (``{"text": ...}``)."""
    if "text" in row:
        return tokenize_text(row["text"], tokenizer)
    return tokenize_chat(row["messages"], tokenizer, responses_only)


def _finish(block: Block, seq_len: int, pad_id: int, stats: PackingStats) -> Block:
    """Pad a block to ``seq_len``; pad positions form their own segment, so nothing attends to them."""
    n_pad = seq_len - len(block.input_ids)
    stats.real_tokens += len(block.input_ids)
    stats.total_tokens += seq_len
    block.input_ids += [pad_id] * n_pad
    block.labels += [IGNORE_INDEX] * n_pad
    block.position_ids += list(range(n_pad))
    return block


def pack_examples(examples: Iterable[Example], seq_len: int, pad_id: int, packing: bool = True,
                  stats: PackingStats | None = None, drop_no_answer: bool = True) -> Iterator[Block]:
    """Greedy in-order packing into blocks of exactly ``seq_len`` tokens (one example per block without packing).

    Examples longer than ``seq_len`` are truncated (counted in ``stats.truncated``); one whose answer tokens
    would all be cut off is left out (counted in ``stats.dropped_no_answer``): trained on, it would teach
    nothing but its prompt. Eval keeps it (``drop_no_answer=False``): it adds no loss, and every rank must
    run the same number of forward passes.
    """
    stats = stats if stats is not None else PackingStats()
    block = Block()
    for example in examples:
        stats.examples += 1
        ids, labels = example.input_ids[:seq_len], example.labels[:seq_len]
        if len(example.input_ids) > seq_len:
            stats.truncated += 1
            if drop_no_answer and all(label == IGNORE_INDEX for label in labels):
                stats.dropped_no_answer += 1
                continue
        if block.input_ids and (not packing or len(block.input_ids) + len(ids) > seq_len):
            yield _finish(block, seq_len, pad_id, stats)
            block = Block()
        block.input_ids += ids
        block.labels += labels
        block.position_ids += list(range(len(ids)))
        block.row_ids.append(example.row_id)
    if block.input_ids:
        yield _finish(block, seq_len, pad_id, stats)


def model_inputs(batch: dict, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a micro-batch that the model takes (a batch also carries its ``row_ids``)."""
    return {key: batch[key].to(device) if device is not None else batch[key] for key in MODEL_INPUTS}


def batches(blocks: Iterable[Block], micro_batch_size: int) -> Iterator[dict]:
    """Stack blocks into ``{"input_ids", "labels", "position_ids"}`` tensors, plus the ``row_ids`` of each
    block; a short last batch is dropped so that every rank and every step sees the same shapes."""
    pending: list[Block] = []
    for block in blocks:
        pending.append(block)
        if len(pending) == micro_batch_size:
            yield {
                "input_ids": torch.tensor([b.input_ids for b in pending]),
                "labels": torch.tensor([b.labels for b in pending]),
                "position_ids": torch.tensor([b.position_ids for b in pending]),
                "row_ids": [b.row_ids for b in pending],
            }
            pending = []


def shard_key(row_id: str) -> int:
    """A row's 64-bit stable hash: its id's, the same on every run, machine and Python process."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big")


def stable_shard(row_id: str, world_size: int) -> int:
    """The rank that owns a row: its ``shard_key`` modulo the number of ranks."""
    return shard_key(row_id) % world_size


def shard_rows(rows: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """This rank's rows, by id hash: deterministic, so a resumed run sees the same data in the same order."""
    return (row for row in rows if world_size == 1 or stable_shard(row["id"], world_size) == rank)


def shuffled(rows: Iterable[T], seed: int, buffer_size: int = 1024) -> Iterator[T]:
    """A seeded streaming shuffle (a local buffer): the same seed gives the same order, whatever the items."""
    rng = random.Random(seed)
    buffer: list[T] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def train_batches(rows: Iterable[dict], tokenizer: PreTrainedTokenizerBase, *, seq_len: int, micro_batch_size: int,
                  rank: int = 0, world_size: int = 1, seed: int = 0, packing: bool = True,
                  responses_only: bool = True, stats: PackingStats | None = None) -> Iterator[dict]:
    """Rows -> this rank's shard -> seeded shuffle -> tokenised -> packed -> micro-batches: one epoch.
    (A training run reads the rows tokenised once, ``prepared.prepared_batches``: the same batches.)"""
    mine = shuffled(shard_rows(rows, rank, world_size), seed=seed)
    examples = (dataclasses.replace(tokenize_chat(row["messages"], tokenizer, responses_only), row_id=row["id"])
                for row in mine)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return packed_batches(examples, seq_len=seq_len, micro_batch_size=micro_batch_size, pad_id=pad_id,
                          packing=packing, stats=stats)


def packed_batches(examples: Iterable[Example], *, seq_len: int, micro_batch_size: int, pad_id: int,
                   packing: bool = True, stats: PackingStats | None = None) -> Iterator[dict]:
    """Examples, in the order they come -> packed blocks -> micro-batches."""
    stats = stats if stats is not None else PackingStats()
    blocks = pack_examples(examples, seq_len, pad_id, packing=packing, stats=stats)
    return batches(refuse_all_dropped(blocks, stats, seq_len), micro_batch_size)


def refuse_all_dropped(blocks: Iterable[Block], stats: PackingStats, seq_len: int) -> Iterator[Block]:
    """The blocks; an epoch that yields none because truncation cut every answer off is an error, not an
    empty run."""
    produced = False
    for block in blocks:
        produced = True
        yield block
    if not produced and stats.dropped_no_answer:
        raise ConfigError(
            f"every train example loses all its answer tokens when cut to model.max_seq_len={seq_len} "
            f"({stats.dropped_no_answer} dropped): raise model.max_seq_len, or curate with a lower curate.max_tokens")


def read_rows(paths: list[str]) -> list[dict]:
    """The (id, messages) rows of curated Parquet files, in order (the eval set; the bench's bare loop)."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in paths:
        rows += pq.read_table(path, columns=["id", "messages"]).to_pylist()
    return rows


def grouped(batches: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of ``size`` (one optimizer step's micro-batches); a short last group is dropped."""
    group: list[T] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
