"""The curation stage on Ray Data: read, filter, dedup, decontaminate, split, account for every row.

    raylora demo-assets configs/demo.yaml     # the sample data with planted defects
    raylora curate configs/demo.yaml          # -> <workdir>/curated/{train,eval,dropped}/*.parquet + manifest.json

Every row read ends in exactly one of train, eval or dropped (with its reason), per source; the
manifest records the counts and the train and tune stages read only the manifest. Intermediate
results are Parquet under ``<output>/_work`` so the pipeline streams instead of holding rows in RAM.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster.runtime_env import ensure_ray
from pipelines.artifacts import DatasetManifest
from pipelines.config import CurateConfig, RayloraConfig
from pipelines.dedup import (
    DedupSpec,
    EvalIndex,
    build_eval_index,
    diversity_split,
    embedding_model_path,
    is_contaminated,
    mark_duplicates,
    read_parquet_dir,
    shuffle_partitions,
)
from pipelines.errors import StageError
from pipelines.filters import build_filters, first_failure, quality_score
from pipelines.formats import ROW_SCHEMA, chunk_items, plan_chunks, read_chunk_batch

CONTAMINATED, BELOW_TOP_K, NOT_DIVERSE = "contaminated", "below_top_k", "not_diverse"
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
OUTPUT_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("messages", MESSAGES_TYPE)])
DROPPED_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string())])


@lru_cache(maxsize=2)
def _token_counter(tokenizer: str) -> Any:
    """len(tokens) of a text under the training tokenizer; loaded once per Ray worker process."""
    local = Path(tokenizer) / "tokenizer.json"
    if local.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(local))
        return lambda text: len(fast.encode(text, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    hub = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(hub.encode(text, add_special_tokens=False))


def filter_batch(batch: pa.Table, curate: dict, tokenizer: str | None, max_tokens: int,
                 eval_index: EvalIndex | None) -> pa.Table:
    """Ray ``map_batches`` UDF: set ``reason`` on each row a filter or the eval index drops."""
    settings = CurateConfig.model_validate(curate)
    chain = build_filters(settings, _token_counter(tokenizer) if tokenizer else None, max_tokens)
    reasons = batch.column("reason").to_pylist()
    for i, raw in enumerate(batch.column("messages").to_pylist()):
        if reasons[i]:
            continue  # malformed at read time
        messages = json.loads(raw)
        reasons[i] = first_failure(messages, chain)
        if not reasons[i] and eval_index is not None and is_contaminated(messages, eval_index):
            reasons[i] = CONTAMINATED
    return batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))


def add_scores(batch: pa.Table, seed: int) -> pa.Table:
    """Ray UDF: a deterministic split key (hash of seed and id) and the quality score of each row."""
    ids = batch.column("id").to_pylist()
    keys = [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") >> 1 for i in ids]
    scores = [quality_score(json.loads(m)) for m in batch.column("messages").to_pylist()]
    return batch.append_column("split_key", pa.array(keys, pa.int64())).append_column(
        "quality", pa.array(scores, pa.float64()))


def to_output(batch: pa.Table) -> pa.Table:
    """Ray UDF: pipeline rows -> the canonical Parquet schema the train stage reads."""
    messages = [json.loads(m) for m in batch.column("messages").to_pylist()]
    return pa.table({"id": batch.column("id"), "source": batch.column("source"),
                     "messages": pa.array(messages, MESSAGES_TYPE)}, schema=OUTPUT_SCHEMA)


def to_dropped(batch: pa.Table) -> pa.Table:
    return batch.select(list(DROPPED_SCHEMA.names)).cast(DROPPED_SCHEMA)


def with_reason(batch: pa.Table, reason: str) -> pa.Table:
    rows = batch.select(list(ROW_SCHEMA.names))
    return rows.set_column(rows.schema.get_field_index("reason"), "reason", pa.array([reason] * len(rows),
                                                                                     pa.string()))


def _parquet_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.parquet"))


ROWS_PER_FILE = 100_000


def _write(ds: Any, directory: Path, fn: Any) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    ds.map_batches(fn, batch_format="pyarrow").write_parquet(str(directory), min_rows_per_file=ROWS_PER_FILE)
    return _parquet_files(directory)


def _eval_cutoff(scored: Any, num_eval: int) -> int:
    """The split key below which exactly ``num_eval`` rows lie (keys are hashes of ids: a random, fixed order).

    Only the one int64 column comes back to the driver, not the rows.
    """
    import numpy as np

    if num_eval == 0:
        return np.iinfo(np.int64).min
    keys = np.concatenate([batch["split_key"] for batch in
                           scored.select_columns(["split_key"]).iter_batches(batch_format="numpy")])
    return int(np.partition(keys, num_eval - 1)[num_eval - 1]) + 1


def _resolve_tokenizer(cfg: RayloraConfig) -> str:
    from pipelines.assets import resolve_base_model

    return resolve_base_model(cfg.data.tokenizer or cfg.model.base)


def _count_batch(batch: pa.Table, keys: list[str]) -> pa.Table:
    return batch.group_by(keys).aggregate([([], "count_all")]).rename_columns([*keys, "rows"])


def _counts(ds: Any, keys: list[str]) -> dict[tuple[str, ...], int]:
    """Row counts per key combination: each Ray task counts its blocks, only the small tables come back."""
    totals: Counter[tuple[str, ...]] = Counter()
    # selecting the key columns first lets the Parquet reader skip the message text
    for row in ds.select_columns(keys).map_batches(_count_batch, batch_format="pyarrow",
                                                   fn_kwargs={"keys": keys}).take_all():
        totals[tuple(row[k] for k in keys)] += row["rows"]
    return dict(totals)


def _content_hash(kept: Any) -> str:
    """sha256 over (id, messages) of the kept rows in id order, streamed to the driver a batch at a time."""
    digest = hashlib.sha256()
    for batch in kept.select_columns(["id", "messages"]).sort("id").iter_batches(batch_format="pyarrow",
                                                                                 batch_size=4096):
        for row_id, messages in zip(batch.column("id").to_pylist(), batch.column("messages").to_pylist(),
                                    strict=True):
            digest.update(row_id.encode("utf-8", "surrogatepass") + b"\0")
            digest.update(messages.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def _examples(dropped_files: list[str]) -> dict[str, str]:
    """One example (id and detail) per drop reason, for the report."""
    import pyarrow.parquet as pq

    examples: dict[str, str] = {}
    for path in dropped_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "reason", "detail"]):
            for row_id, reason, detail in zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True):
                examples.setdefault(reason, f"{row_id}" + (f" ({detail})" if detail else ""))
    return examples


def format_report(read: int, kept: int, dropped_by_reason: dict[str, int], examples: dict[str, str]) -> str:
    """The human summary: counts, then a table of drop reasons with one example each."""
    lines = [f"curated {read} rows: kept {kept}, dropped {read - kept}",
             f"  {'reason':<18} {'count':>7}  example"]
    for reason, count in sorted(dropped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        example = examples.get(reason, "")
        lines.append(f"  {reason:<18} {count:>7}  {example[:90]}")
    return "\n".join(lines)


def curate(cfg: RayloraConfig, *, quiet: bool = False) -> DatasetManifest:
    """Run curation for ``cfg``; returns the manifest (also written to ``<output>/manifest.json``)."""
    import ray

    ensure_ray(cfg, log_to_driver=False)
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)))
    with shuffle_partitions(partitions):
        return _curate(cfg, quiet)


def _curate(cfg: RayloraConfig, quiet: bool) -> DatasetManifest:
    import ray.data

    settings = cfg.curate
    out = cfg.path(settings.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    work = out / "_work"

    chunks = plan_chunks(cfg.data.sources)
    eval_index = None
    if cfg.data.eval_sets and settings.decontaminate_ngram:
        try:
            eval_index = build_eval_index(cfg.data.eval_sets, settings.decontaminate_ngram)
        except (OSError, ValueError) as err:
            raise StageError(f"cannot read eval set for decontamination: {err} (check data.eval_sets)") from err
    max_tokens = settings.max_tokens or cfg.model.max_seq_len

    # 1. read + filter + decontaminate: one streaming pass, every row written with its reason
    rows_dir = work / "rows"
    try:
        (ray.data.from_items(chunk_items(chunks), override_num_blocks=max(len(chunks), 1))
         .map_batches(read_chunk_batch, batch_size=1)
         .map_batches(filter_batch, batch_format="pyarrow", batch_size=1000,
                      fn_kwargs={"curate": settings.model_dump(), "tokenizer": _resolve_tokenizer(cfg),
                                 "max_tokens": max_tokens, "eval_index": eval_index})
         .write_parquet(str(rows_dir), min_rows_per_file=ROWS_PER_FILE))
    except Exception as err:  # a Ray task wraps the StageError of a source it could not open (hf://, remote)
        opening = [line for line in str(err).splitlines() if "cannot open data source" in line]
        if opening:
            raise StageError(opening[-1].split("StageError: ")[-1].strip()) from err
        raise
    rows = read_parquet_dir(rows_dir, ROW_SCHEMA)
    passed = rows.filter(expr="reason == ''")

    # 2. dedup across the whole dataset
    spec = DedupSpec(exact=settings.exact_dedup, threshold=settings.near_dedup_threshold,
                     num_perm=settings.minhash_num_perm, shingle_words=settings.shingle_words)
    deduped_dir = work / "deduped"
    if spec.exact or spec.near:
        mark_duplicates(passed, spec, work).write_parquet(str(deduped_dir), min_rows_per_file=ROWS_PER_FILE)
    else:
        passed.write_parquet(str(deduped_dir), min_rows_per_file=ROWS_PER_FILE)
    deduped = read_parquet_dir(deduped_dir, ROW_SCHEMA)
    unique = deduped.filter(expr="reason == ''")

    # 3. optional LIMA-style selection, then a deterministic train / eval split
    scored = unique.map_batches(add_scores, batch_format="pyarrow", fn_kwargs={"seed": cfg.seed})
    rejected = []
    if settings.quality_top_k is not None:
        ranked = scored.sort(["quality", "id"], descending=[True, False]).materialize()
        if ranked.count() > settings.quality_top_k:
            scored, below = ranked.split_at_indices([settings.quality_top_k])
            rejected.append(below.map_batches(with_reason, batch_format="pyarrow", fn_kwargs={"reason": BELOW_TOP_K}))
    if settings.diversity_select is not None:
        scored, not_diverse = diversity_split(scored, settings.diversity_select,
                                              embedding_model_path(settings.embedding_model))
        rejected.append(not_diverse.map_batches(with_reason, batch_format="pyarrow", fn_kwargs={"reason": NOT_DIVERSE}))
    scored_dir = work / "scored"
    scored.write_parquet(str(scored_dir), min_rows_per_file=ROWS_PER_FILE)
    selected = ray.data.read_parquet(str(scored_dir)) if _parquet_files(scored_dir) else None
    num_kept = selected.count() if selected is not None else 0

    dropped = rows.filter(expr="reason != ''").union(deduped.filter(expr="reason != ''"), *rejected)
    dropped_files = _write(dropped, out / "dropped", to_dropped)
    dropped_by_source_reason = _counts(ray.data.read_parquet(dropped_files), ["source", "reason"]) \
        if dropped_files else {}
    dropped_by_reason: Counter[str] = Counter()
    for (_, reason), count in dropped_by_source_reason.items():
        dropped_by_reason[reason] += count
    examples = _examples(dropped_files)
    read_by_source = {src: n for (src,), n in _counts(rows, ["source"]).items()}
    num_read = sum(read_by_source.values())

    if num_kept == 0:
        raise StageError("every row was dropped; nothing to train on. Relax curate.* or check the sources:\n"
                         + format_report(num_read, 0, dict(dropped_by_reason), examples))

    num_eval = cfg.data.eval_size if cfg.data.eval_size is not None else round(num_kept * cfg.data.eval_fraction)
    num_eval = min(num_eval, num_kept - 1)
    cutoff = _eval_cutoff(selected, num_eval)
    train_files = _write(selected.filter(expr=f"split_key >= {cutoff}"), out / "train", to_output)
    eval_files = _write(selected.filter(expr=f"split_key < {cutoff}"), out / "eval", to_output) if num_eval else []
    kept_files = train_files + eval_files
    kept_by_source = {src: n for (src,), n in _counts(ray.data.read_parquet(kept_files), ["source"]).items()}

    per_source: dict[str, dict[str, int]] = {}
    for source, read in sorted(read_by_source.items()):
        kept = kept_by_source.get(source, 0)
        lost = sum(n for (src, _), n in dropped_by_source_reason.items() if src == source)
        per_source[source] = {"read": read, "kept": kept, "dropped": lost}
        if read != kept + lost:
            raise StageError(f"accounting broke for source {source}: read {read} != kept {kept} + dropped {lost}")

    manifest = DatasetManifest(
        train_paths=train_files, eval_paths=eval_files, dropped_paths=dropped_files,
        num_read=num_read, num_train=num_kept - num_eval, num_eval=num_eval,
        num_dropped=sum(dropped_by_reason.values()), dropped_by_reason=dict(sorted(dropped_by_reason.items())),
        per_source=per_source, content_hash=_content_hash(selected),
        config={"data": cfg.data.model_dump(mode="json"), "curate": settings.model_dump(mode="json")},
    )
    manifest.write(out / "manifest.json")
    shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(format_report(num_read, num_kept, manifest.dropped_by_reason, examples))
    return manifest
