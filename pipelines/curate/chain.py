"""The read pass's filter chain: built once per Ray worker from a plain spec, run over each batch of rows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.config import CurateConfig, RayloraConfig
from pipelines.curate.decontaminate import ContaminationFilter, EvalIndex, build_eval_index
from pipelines.curate.dedup import (
    KEYS_TYPE,
    DedupSpec,
    dedup_keys,
)
from pipelines.curate.filters import Filter, build_filters, first_failures
from pipelines.curate.reasons import KEPT
from pipelines.curate.split import (
    CHAT,
    DIGEST_TYPE,
    MESSAGES_TYPE,
    ROW_DIGEST,
    SPLIT_KEY,
    row_digest,
    split_keys,
)
from pipelines.curate.token_count import chat_token_counter, length_model, token_limit
from pipelines.errors import StageError


@dataclass(frozen=True)
class ChainSpec:
    """What builds the filter chain inside a Ray worker, as plain data; ``key`` names the chain in the
    worker's cache, so each worker process builds it (and loads its tokenizer and models) once."""

    curate: dict
    model: str
    max_tokens: int
    eval_index: EvalIndex | None
    key: str


def chain_spec(cfg: RayloraConfig) -> ChainSpec:
    """The filter chain ``cfg`` configures, keyed by everything that shapes it (the eval items included)."""
    curate, model, max_tokens, eval_index = cfg.curate.model_dump(), length_model(cfg), token_limit(cfg), \
        load_eval_index(cfg)
    index = None if eval_index is None else [eval_index.n, sorted(eval_index.ngrams),
                                             sorted((n, sorted(items)) for n, items in eval_index.short_items.items())]
    key = hashlib.sha256(json.dumps([curate, model, max_tokens, index], sort_keys=True, default=str).encode()
                         ).hexdigest()
    return ChainSpec(curate=curate, model=model, max_tokens=max_tokens, eval_index=eval_index, key=key)


# Ray reuses worker processes across tasks; a worker keeps the chains it built (one per run config).
WORKER_CHAINS: dict[str, list[Filter]] = {}


def worker_chain(spec: ChainSpec) -> list[Filter]:
    if spec.key not in WORKER_CHAINS:
        WORKER_CHAINS[spec.key] = filter_chain(CurateConfig.model_validate(spec.curate), spec.model,
                                               spec.max_tokens, spec.eval_index)
    return WORKER_CHAINS[spec.key]


def load_eval_index(cfg: RayloraConfig) -> EvalIndex | None:
    """The index of ``data.eval_sets`` that decontamination checks rows against; None when it is off."""
    if not cfg.data.eval_sets or not cfg.curate.decontaminate_ngram:
        return None
    try:
        return build_eval_index(cfg.data.eval_sets, cfg.curate.decontaminate_ngram)
    except (OSError, ValueError) as err:
        raise StageError(f"cannot read eval set for decontamination: {err} (check data.eval_sets)") from err


def filter_chain(curate: CurateConfig, model: str, max_tokens: int, eval_index: EvalIndex | None) -> list[Filter]:
    """The checks every row goes through, in order: the configured filters (the length filter renders with
    ``model``, the JSON of a model section), then decontamination."""
    chain = build_filters(curate, chat_token_counter(model), max_tokens)
    return chain if eval_index is None else [*chain, ContaminationFilter(eval_index)]


def filter_batch(batch: pa.Table, chain: ChainSpec, dedup: DedupSpec | None, seed: int,
                 clock: Any = None) -> pa.Table:
    """Ray ``map_batches`` UDF: set ``reason`` on each row the filter chain drops, and give every row its
    split key and digest, and every row that passed its conversation in the output type (``chat``) and its
    dedup bucket keys (``dedup_keys``), while its conversation is parsed anyway; each filter's seconds go to ``clock`` (a ``timing.FilterClock``), if any."""
    seconds: dict[str, float] = {}
    reasons, passed = filter_conversations(batch, worker_chain(chain), seconds)
    if clock is not None:
        import ray

        ray.get(clock.add.remote(seconds))
    digests = [row_digest(row_id, messages) if messages is not None else bytes(32)
               for row_id, messages in zip(batch.column("id").to_pylist(), passed, strict=True)]
    batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    batch = (batch.append_column(SPLIT_KEY, pa.array(split_keys(batch, seed), pa.int64()))
             .append_column(ROW_DIGEST, pa.array(digests, DIGEST_TYPE))
             .append_column(CHAT, pa.array(passed, MESSAGES_TYPE)))
    keys = dedup_keys(passed, dedup) if dedup is not None else pa.array([[]] * batch.num_rows, KEYS_TYPE)
    return batch.append_column("dedup_keys", keys)


def filter_conversations(batch: pa.Table, chain: list[Filter],
                         seconds: dict[str, float] | None = None) -> tuple[list[str], list[Any]]:
    """(each row's reason, each kept row's parsed conversation or None) of pipeline rows run through ``chain``;
    a row malformed at read time keeps its reason. ``seconds`` gains each filter's time, when given."""
    read_ok = [reason == KEPT for reason in batch.column("reason").to_pylist()]  # not malformed at read time
    conversations = [json.loads(raw) if ok else None
                     for raw, ok in zip(batch.column("messages").to_pylist(), read_ok, strict=True)]
    verdicts = first_failures(conversations, chain, seconds)
    reasons = [verdict if ok else reason
               for verdict, ok, reason in zip(verdicts, read_ok, batch.column("reason").to_pylist(), strict=True)]
    passed = [messages if reason == KEPT else None for messages, reason in zip(conversations, reasons, strict=True)]
    return reasons, passed


# --- 2. dedup -------------------------------------------------------------------------------------------
