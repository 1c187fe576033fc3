"""The prepared dataset: the curated train rows tokenised and masked once, then read by every run and tune trial.

    raylora train configs/demo.yaml     # prepares <workdir>/prepared/<key>/ on first use, reuses it after

Tokenising with the chat template (and finding the answer tokens) is the costly part of the data feed; done
inside a worker it competes with the training step for the worker's core. So the driver does it once, before
any worker starts, into ``<workdir>/prepared/<key>/``:

    train.arrow      Arrow IPC, one row per curated train row in the curated order: id, input_ids, labels,
                     shard_key (the id's stable hash, so a rank picks its rows without hashing every id)
    prepared.json    what the key was made of, row and token counts, and ``shortest_trainable_length``: the
                     fewest tokens a block may hold for some row to keep an answer token (the driver refuses
                     a ``model.max_seq_len`` below it, before any worker starts)

An Arrow IPC file is memory-mapped by every worker on a machine (one copy in the page cache, nothing decoded).
The key hashes what changes the tokens: the curated train data's hash, the tokenizer by content (vocabulary,
added tokens, chat template) with ``model.base`` and ``model.revision``, ``model.chat_template`` and
``train.train_on_responses_only``. ``model.max_seq_len`` is not in it: rows are stored whole and cut to the
block length when packed, as before, so one preparation serves every sequence length and counts truncation
the same way.

Workers read the file directly, so on a multi-node cluster ``workdir`` must be shared storage, as it already is
for the curated data.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.artifacts import DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError
from pipelines.train.data import (
    IGNORE_INDEX,
    Example,
    PackingStats,
    packed_batches,
    shard_key,
    shuffled,
    tokenize_chat,
)

PREPARED_DIR = "prepared"
PREPARED_FILE = "train.arrow"
PREPARED_MANIFEST = "prepared.json"
PREPARED_FORMAT = 2  # bump when the file's layout or the tokenisation changes: every key changes with it
SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                    ("shard_key", pa.uint64())])
WRITE_BATCH_ROWS = 1024


def tokenizer_digest(tokenizer: Any) -> str:
    """The tokenizer by content: a fast tokenizer's full serialisation (vocabulary, merges, added tokens,
    normalisation), else its vocabulary; and the chat template it renders with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((text + "\0" + str(tokenizer.chat_template)).encode()).hexdigest()


def prepared_key_inputs(cfg: RayloraConfig, manifest: DatasetManifest, tokenizer: Any) -> dict[str, Any]:
    return {"format": PREPARED_FORMAT, "train_hash": manifest.train_hash, "base": cfg.model.base,
            "revision": cfg.model.revision, "chat_template": cfg.model.chat_template,
            "tokenizer": tokenizer_digest(tokenizer), "responses_only": cfg.train.train_on_responses_only}


def prepared_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def prepare_dataset(cfg: RayloraConfig, manifest: DatasetManifest, base_path: str) -> Path:
    """The prepared dataset's directory for this config and manifest: reused when it exists, else built.

    Runs in the driver before workers start. Concurrent callers (tune trials) build it once: the first takes
    a lock and builds into a temporary directory that is renamed into place when complete."""
    from adapters.build import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.model_copy(update={"base": base_path}))
    inputs = prepared_key_inputs(cfg, manifest, tokenizer)
    root = cfg.path(PREPARED_DIR).resolve()
    directory = root / prepared_key(inputs)
    if (directory / PREPARED_MANIFEST).is_file():
        return directory
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another trial may be building it: wait, then take its result
        if (directory / PREPARED_MANIFEST).is_file():
            return directory
        building = root / f"{directory.name}.building"
        shutil.rmtree(building, ignore_errors=True)  # left by a build that died
        building.mkdir()
        started = time.perf_counter()
        counts = write_prepared(building / PREPARED_FILE, manifest.train_paths, tokenizer,
                                cfg.train.train_on_responses_only)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        (building / PREPARED_MANIFEST).write_text(json.dumps(
            {"key": inputs, **counts, "pad_id": pad_id, "seconds": round(time.perf_counter() - started, 2)},
            indent=2) + "\n")
        os.replace(building, directory)
    print(f"raylora train: prepared {counts['rows']:,} train rows ({counts['tokens']:,} tokens) in "
          f"{time.perf_counter() - started:.1f}s: {directory}", flush=True)
    return directory


def write_prepared(path: Path, train_paths: list[str], tokenizer: Any, responses_only: bool) -> dict[str, int]:
    """Tokenise and mask every curated train row, in order, into one Arrow IPC file."""
    import pyarrow.parquet as pq

    rows = tokens = 0
    shortest = None
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        for train_path in train_paths:
            for batch in pq.ParquetFile(train_path).iter_batches(batch_size=WRITE_BATCH_ROWS,
                                                                  columns=["id", "messages"]):
                ids, messages = batch.column("id").to_pylist(), batch.column("messages").to_pylist()
                examples = [tokenize_chat(m, tokenizer, responses_only) for m in messages]
                writer.write_batch(pa.record_batch([
                    pa.array(ids, pa.string()),
                    pa.array([e.input_ids for e in examples], pa.list_(pa.int32())),
                    pa.array([e.labels for e in examples], pa.list_(pa.int32())),
                    pa.array([shard_key(i) for i in ids], pa.uint64()),
                ], schema=SCHEMA))
                rows += len(examples)
                tokens += sum(len(e.input_ids) for e in examples)
                shortest = min([n for n in [shortest, *map(trainable_length, examples)] if n is not None], default=None)
    return {"rows": rows, "tokens": tokens, "shortest_trainable_length": shortest}


def trainable_length(example: Example) -> int | None:
    """The fewest tokens a block may hold for ``example`` to keep an answer token: the whole row, or up to its
    first answer token when that comes sooner (None: the row has no answer token at all)."""
    first_answer = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), None)
    return None if first_answer is None else min(len(example.input_ids), first_answer + 1)


def check_rows_fit(cfg: RayloraConfig, directory: Path) -> None:
    """Found by the driver from the prepared rows' counts, not by every worker after Ray has started them:
    ``model.max_seq_len`` keeps an answer token of at least one row, and there are rows enough for one optimizer
    step on every rank (a block holds at least one row; a rank's exact share is known only to the rank)."""
    prepared = json.loads((directory / PREPARED_MANIFEST).read_text())
    shortest = prepared["shortest_trainable_length"]
    if shortest is not None and cfg.model.max_seq_len < shortest:
        raise ConfigError(f"model.max_seq_len={cfg.model.max_seq_len} cuts the answer off every train row (the "
                          f"shortest needs {shortest} tokens): set model.max_seq_len={shortest} or more")
    per_step = cfg.cluster.num_workers * cfg.train.micro_batch_size * cfg.train.grad_accum
    if prepared["rows"] < per_step:
        raise ConfigError(f"{prepared['rows']} train rows cannot fill one step of cluster.num_workers x "
                          f"train.micro_batch_size x train.grad_accum = {per_step} blocks: lower one of those")


@dataclass
class PreparedRows:
    """The prepared train rows, memory-mapped: a rank takes its shard by ``shard_key`` and reads an example by
    position, as two slices of the token arrays of its record batch (nothing decoded or copied up front)."""

    ids: list[str]
    pad_id: int  # the tokenizer's padding token, for the blocks packed from these rows
    shard_keys: np.ndarray
    batch_starts: np.ndarray  # the position of each record batch's first row
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per batch: offsets, input_ids, labels

    @classmethod
    def open(cls, directory: str | Path) -> PreparedRows:
        source = pa.memory_map(str(Path(directory) / PREPARED_FILE))  # kept open by the arrays that view it
        table = pa.ipc.open_file(source).read_all()
        batches, starts, position = [], [], 0
        for input_ids, labels in zip(table.column("input_ids").chunks, table.column("labels").chunks, strict=True):
            # a list array's offsets index its values array, whatever slice of it the array is
            batches.append((input_ids.offsets.to_numpy(), input_ids.values.to_numpy(), labels.values.to_numpy()))
            starts.append(position)
            position += len(input_ids)
        pad_id = json.loads((Path(directory) / PREPARED_MANIFEST).read_text())["pad_id"]
        return cls(ids=table.column("id").to_pylist(), pad_id=pad_id, shard_keys=table.column("shard_key").to_numpy(),
                   batch_starts=np.array(starts), batches=batches)

    def __len__(self) -> int:
        return len(self.ids)

    def shard(self, rank: int, world_size: int) -> list[int]:
        """This rank's row positions, in order: the rows ``data.shard_rows`` gives it."""
        if world_size == 1:
            return list(range(len(self)))
        return np.flatnonzero(self.shard_keys % np.uint64(world_size) == rank).tolist()

    def example(self, position: int) -> Example:
        batch = int(np.searchsorted(self.batch_starts, position, side="right")) - 1
        offsets, input_ids, labels = self.batches[batch]
        local = position - int(self.batch_starts[batch])
        start, end = offsets[local], offsets[local + 1]
        return Example(input_ids=input_ids[start:end].tolist(), labels=labels[start:end].tolist(),
                       row_id=self.ids[position])

    def examples(self, positions: Iterable[int]) -> Iterator[Example]:
        return (self.example(p) for p in positions)


def prepared_batches(rows: PreparedRows, *, seq_len: int, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                     seed: int = 0, packing: bool = True, stats: PackingStats | None = None) -> Iterator[dict]:
    """One epoch of this rank's micro-batches: its shard -> seeded shuffle -> packed -> micro-batches, the
    batches ``data.train_batches`` makes from the curated rows, without tokenising anything."""
    order = shuffled(rows.shard(rank, world_size), seed=seed)
    return packed_batches(rows.examples(order), seq_len=seq_len, micro_batch_size=micro_batch_size,
                          pad_id=rows.pad_id, packing=packing, stats=stats)
