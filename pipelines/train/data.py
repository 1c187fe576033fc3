"""Training data for the train stage: chat-template tokenisation, response-only loss masks, packing, batches.

Plain functions over plain rows (``{"id", "messages"}`` dicts), so they run the same inside a Ray Train
worker (rows from ``ray.train.get_dataset_shard``) and without Ray (rows from a Parquet file):

    from pipelines.train.data import tokenize_chat, pack_examples, batches
    examples = (tokenize_chat(row["messages"], tokenizer) for row in rows)
    for batch in batches(pack_examples(examples, seq_len=256), micro_batch_size=8): ...

A packed block holds several examples back to back; ``position_ids`` restart at 0 for each example and
the model is called without an attention mask, so transformers builds a block-diagonal causal mask from
the position ids (``masking_utils.find_packed_sequence_indices``): no attention crosses examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import random
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from transformers import PreTrainedTokenizerBase

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
    truncated: int = 0
    real_tokens: int = 0
    total_tokens: int = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0


@dataclass
class Block:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)  # the rows packed into it, in order


def tokenize_chat(messages: list[dict], tokenizer: PreTrainedTokenizerBase, responses_only: bool = True) -> Example:
    """Apply the chat template; with ``responses_only`` only the assistant tokens carry labels.

    The template must mark assistant turns with ``{% generation %}`` for ``return_assistant_tokens_mask``;
    the first token never carries a label, so a packed example is never predicted from its neighbour.
    """
    out = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=responses_only,
    )
    ids = list(out["input_ids"])
    if responses_only:
        mask = list(out["assistant_masks"])
        if not any(mask):
            raise ValueError(
                "the chat template marks no assistant tokens: it needs {% generation %} around assistant "
                "content, or set train.train_on_responses_only=false"
            )
        labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, mask, strict=True)]
    else:
        labels = list(ids)
    labels[0] = IGNORE_INDEX
    return Example(input_ids=ids, labels=labels)


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
                  stats: PackingStats | None = None) -> Iterator[Block]:
    """Greedy in-order packing into blocks of exactly ``seq_len`` tokens (one example per block without packing).

    Examples longer than ``seq_len`` are truncated (counted in ``stats.truncated``).
    """
    stats = stats if stats is not None else PackingStats()
    block = Block()
    for example in examples:
        stats.examples += 1
        if len(example.input_ids) > seq_len:
            stats.truncated += 1
        ids, labels = example.input_ids[:seq_len], example.labels[:seq_len]
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


def stable_shard(row_id: str, world_size: int) -> int:
    """The rank that owns a row: a hash of its id, the same on every run, machine and Python process."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") % world_size


def shard_rows(rows: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """This rank's rows, by id hash: deterministic, so a resumed run sees the same data in the same order."""
    return (row for row in rows if world_size == 1 or stable_shard(row["id"], world_size) == rank)


def shuffled(rows: Iterable[dict], seed: int, buffer_size: int = 1024) -> Iterator[dict]:
    """A seeded streaming shuffle (a local buffer): the same seed gives the same order."""
    rng = random.Random(seed)
    buffer: list[dict] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def train_batches(rows: Iterable[dict], tokenizer: PreTrainedTokenizerBase, *, seq_len: int, micro_batch_size: int,
                  rank: int = 0, world_size: int = 1, seed: int = 0, packing: bool = True,
                  responses_only: bool = True, stats: PackingStats | None = None) -> Iterator[dict]:
    """Rows -> this rank's shard -> seeded shuffle -> tokenised -> packed -> micro-batches: one epoch."""
    mine = shuffled(shard_rows(rows, rank, world_size), seed=seed)
    examples = (dataclasses.replace(tokenize_chat(row["messages"], tokenizer, responses_only), row_id=row["id"])
                for row in mine)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return batches(pack_examples(examples, seq_len, pad_id, packing=packing, stats=stats), micro_batch_size)


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


@dataclass
class _Failed:
    error: BaseException


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` on a background thread, up to ``depth`` ahead of the consumer, so the data feed
    (Ray Data rows, tokenising, packing) overlaps the training step instead of adding to it. Order is kept;
    an error in the producer is raised in the consumer; a consumer that stops early stops the producer."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(_Failed(err))

    thread = threading.Thread(target=produce, name="raylora-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
