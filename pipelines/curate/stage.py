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
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.runtime_env import ensure_ray
from pipelines.artifacts import DatasetManifest, curated_manifest_path
from pipelines.config import CurateConfig, RayloraConfig
from pipelines.curate.dedup import (
    KEYS_TYPE,
    DedupSpec,
    EvalIndex,
    build_eval_index,
    dedup_keys,
    diversity_split,
    embedding_model_path,
    is_contaminated,
    mark_duplicates,
    read_parquet_dir,
    shuffle_partitions,
)
from pipelines.curate.filters import build_filters, first_failure, quality_score
from pipelines.curate.formats import ROW_SCHEMA, chunk_items, plan_chunks, read_chunk_batch
from pipelines.errors import StageError

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
                 eval_index: EvalIndex | None, dedup: DedupSpec | None) -> pa.Table:
    """Ray ``map_batches`` UDF: set ``reason`` on each row a filter or the eval index drops, and give every
    row that passed its dedup bucket keys (``dedup_keys``) while its conversation is parsed anyway."""
    settings = CurateConfig.model_validate(curate)
    chain = build_filters(settings, _token_counter(tokenizer) if tokenizer else None, max_tokens)
    reasons = batch.column("reason").to_pylist()
    passed: list[list[dict[str, str]] | None] = [None] * batch.num_rows
    for i, raw in enumerate(batch.column("messages").to_pylist()):
        if reasons[i]:
            continue  # malformed at read time
        messages = json.loads(raw)
        reasons[i] = first_failure(messages, chain)
        if not reasons[i] and eval_index is not None and is_contaminated(messages, eval_index):
            reasons[i] = CONTAMINATED
        if not reasons[i]:
            passed[i] = messages
    batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    if dedup is None:
        return batch
    return batch.append_column("dedup_keys", dedup_keys(passed, dedup))


def split_keys(ids: list[str], seed: int) -> np.ndarray:
    """The deterministic split key of each id: a hash of seed and id (a random, fixed order of the rows)."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") >> 1
                     for i in ids], dtype=np.int64)


def add_quality(batch: pa.Table) -> pa.Table:
    """Ray UDF: the quality score of each row, for top-k selection."""
    scores = [quality_score(json.loads(m)) for m in batch.column("messages").to_pylist()]
    return batch.append_column("quality", pa.array(scores, pa.float64()))


def to_output(batch: pa.Table, seed: int, eval_cutoff: int) -> pa.Table:
    """Ray UDF: kept rows -> the canonical Parquet schema the train stage reads, plus the ``split`` (train or
    eval: eval holds the rows whose split key is below the cutoff) the write partitions on."""
    messages = [json.loads(m) for m in batch.column("messages").to_pylist()]
    is_eval = split_keys(batch.column("id").to_pylist(), seed) < eval_cutoff
    return pa.table({"id": batch.column("id"), "source": batch.column("source"),
                     "messages": pa.array(messages, MESSAGES_TYPE),
                     "split": pa.array(np.where(is_eval, "eval", "train"), pa.string())},
                    schema=OUTPUT_SCHEMA.append(pa.field("split", pa.string())))


def to_dropped(batch: pa.Table) -> pa.Table:
    return batch.select(list(DROPPED_SCHEMA.names)).cast(DROPPED_SCHEMA)


def with_reason(batch: pa.Table, reason: str) -> pa.Table:
    rows = batch.select(list(ROW_SCHEMA.names))
    return rows.set_column(rows.schema.get_field_index("reason"), "reason", pa.array([reason] * len(rows),
                                                                                     pa.string()))


def _parquet_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.parquet"))


ROWS_PER_FILE = 100_000
BUCKET_SHIFT = 47  # split keys are 63-bit hashes: their top 16 bits name one of 65536 buckets
DIGEST_MODULUS = 1 << 256


def _scan(files: list[str], columns: list[str], kept_only: bool = False) -> Iterator[pa.Table]:
    """Stream columns of Parquet files a row group at a time (the driver never holds a whole column)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=65_536):
            table = pa.Table.from_batches([batch])
            yield table.filter(pc.equal(table.column("reason"), "")) if kept_only else table


def _count_by(files: list[str], keys: list[str]) -> Counter[tuple[str, ...]]:
    """Rows per key combination, counted by Arrow group-bys over the key columns only."""
    totals: Counter[tuple[str, ...]] = Counter()
    for table in _scan(files, keys):
        counts = table.group_by(keys).aggregate([([], "count_all")])
        for row in counts.to_pylist():
            totals[tuple(row[k] for k in keys)] += row["count_all"]
    return totals


def _kept_histogram(kept_files: list[str], seed: int) -> tuple[Counter[int], str]:
    """Kept rows per split-key bucket, and the content hash: sha256 over the count and the sum of the rows'
    sha256 digests of (id, messages) modulo 2^256, which no row order changes."""
    histogram: Counter[int] = Counter()
    digest_sum, num_kept = 0, 0
    for table in _scan(kept_files, ["id", "messages", "reason"], kept_only=True):
        ids = table.column("id").to_pylist()
        histogram.update((split_keys(ids, seed) >> BUCKET_SHIFT).tolist())
        for row_id, messages in zip(ids, table.column("messages").to_pylist(), strict=True):
            digest = hashlib.sha256(row_id.encode("utf-8", "surrogatepass") + b"\0"
                                    + messages.encode("utf-8", "surrogatepass")).digest()
            digest_sum += int.from_bytes(digest, "big")
        num_kept += len(ids)
    content = f"{num_kept}:".encode() + (digest_sum % DIGEST_MODULUS).to_bytes(32, "big")
    return histogram, hashlib.sha256(content).hexdigest()


def _eval_cutoff(kept_files: list[str], histogram: Counter[int], num_eval: int, seed: int) -> int:
    """The split key below which exactly ``num_eval`` kept rows lie.

    The bucket histogram says which bucket holds the ``num_eval``-th smallest key; only that bucket's
    few keys (about rows / 65536) are kept while the id column streams past.
    """
    if num_eval == 0:
        return np.iinfo(np.int64).min
    below = 0
    for bucket in sorted(histogram):
        if below + histogram[bucket] >= num_eval:
            break
        below += histogram[bucket]
    keys: list[int] = []
    for table in _scan(kept_files, ["id", "reason"], kept_only=True):
        split = split_keys(table.column("id").to_pylist(), seed)
        keys.extend(split[(split >> BUCKET_SHIFT) == bucket].tolist())
    return sorted(keys)[num_eval - below - 1] + 1


def _union(datasets: list[Any]) -> Any:
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _resolve_tokenizer(cfg: RayloraConfig) -> str:
    from pipelines.models import resolve_base_model

    return resolve_base_model(cfg.data.tokenizer or cfg.model.base)


def _written_rows(files: list[str]) -> int:
    """Rows in Parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in files)


def _examples(dropped_files: list[str]) -> dict[str, str]:
    """One example (id and detail) per drop reason, for the report."""
    examples: dict[str, str] = {}
    for table in _scan(dropped_files, ["id", "reason", "detail"]):
        for row_id, reason, detail in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True):
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


def curate(cfg: RayloraConfig, *, quiet: bool = False, verbose: bool = False) -> DatasetManifest:
    """Run curation for ``cfg``; returns the manifest (also written to ``<output>/manifest.json``).

    ``verbose`` shows Ray Data's progress bars and per-execution INFO logs (hidden otherwise).
    """
    import ray

    ensure_ray(cfg, log_to_driver=False)
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)))
    with shuffle_partitions(partitions), _ray_data_logs(verbose):
        return _curate(cfg, quiet)


@contextmanager
def _ray_data_logs(verbose: bool) -> Iterator[None]:
    import logging

    from ray.data.context import DataContext

    ctx, logger = DataContext.get_current(), logging.getLogger("ray.data")
    saved = ctx.enable_progress_bars, ctx.enable_auto_log_stats, logger.level
    if not verbose:
        ctx.enable_progress_bars, ctx.enable_auto_log_stats = False, False
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.enable_auto_log_stats = saved[:2]
        logger.setLevel(saved[2])


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

    spec = DedupSpec(exact=settings.exact_dedup, threshold=settings.near_dedup_threshold,
                     num_perm=settings.minhash_num_perm, shingle_words=settings.shingle_words)
    dedup = spec if spec.exact or spec.near else None

    # 1. read + filter + decontaminate + dedup keys: one streaming pass, every row written with its reason.
    # One task per read chunk: Ray fuses these ops and bundles their input (one row per chunk) up to the
    # largest batch_size or min_rows_per_file, so either would put every chunk into one task on one core.
    rows_dir = work / "rows"
    try:
        (ray.data.from_items(chunk_items(chunks), override_num_blocks=max(len(chunks), 1))
         .map_batches(read_chunk_batch, batch_size=1)
         .map_batches(filter_batch, batch_format="pyarrow", batch_size=None,
                      fn_kwargs={"curate": settings.model_dump(), "tokenizer": _resolve_tokenizer(cfg),
                                 "max_tokens": max_tokens, "eval_index": eval_index, "dedup": dedup})
         .write_parquet(str(rows_dir)))
    except Exception as err:  # a Ray task wraps the StageError of a source it could not open (hf://, remote)
        opening = [line for line in str(err).splitlines() if "cannot open data source" in line]
        if opening:
            raise StageError(opening[-1].split("StageError: ")[-1].strip()) from err
        raise
    rows = read_parquet_dir(rows_dir, ROW_SCHEMA if dedup is None else ROW_SCHEMA.append(
        pa.field("dedup_keys", KEYS_TYPE)))
    passed = rows.filter(expr="reason == ''")

    # 2. dedup across the whole dataset
    deduped_dir = work / "deduped"
    if dedup is not None:
        mark_duplicates(passed, spec).write_parquet(str(deduped_dir), min_rows_per_file=ROWS_PER_FILE)
        deduped = read_parquet_dir(deduped_dir, ROW_SCHEMA)
    else:
        deduped = passed
    unique = deduped.filter(expr="reason == ''")

    # 3. optional LIMA-style selection
    selected, kept_files, rejected = unique, _parquet_files(deduped_dir if dedup is not None else rows_dir), []
    if settings.quality_top_k is not None or settings.diversity_select is not None:
        scored = unique
        if settings.quality_top_k is not None:
            ranked = unique.map_batches(add_quality, batch_format="pyarrow").sort(
                ["quality", "id"], descending=[True, False]).materialize()
            if ranked.count() > settings.quality_top_k:
                scored, below = ranked.split_at_indices([settings.quality_top_k])
                rejected.append(below.map_batches(with_reason, batch_format="pyarrow",
                                                  fn_kwargs={"reason": BELOW_TOP_K}))
        if settings.diversity_select is not None:
            scored, not_diverse = diversity_split(scored, settings.diversity_select,
                                                  embedding_model_path(settings.embedding_model))
            rejected.append(not_diverse.map_batches(with_reason, batch_format="pyarrow",
                                                    fn_kwargs={"reason": NOT_DIVERSE}))
        scored_dir = work / "scored"
        scored.write_parquet(str(scored_dir), min_rows_per_file=ROWS_PER_FILE)
        selected, kept_files = read_parquet_dir(scored_dir, ROW_SCHEMA), _parquet_files(scored_dir)

    # 4. everything dropped, in one write; counts come from the written files' key columns
    dropped_parts = [rows.filter(expr="reason != ''").select_columns(list(ROW_SCHEMA.names))]
    if dedup is not None:
        dropped_parts.append(deduped.filter(expr="reason != ''"))
    dropped_dir = out / "dropped"
    dropped_dir.mkdir(parents=True, exist_ok=True)
    _union([*dropped_parts, *rejected]).map_batches(to_dropped, batch_format="pyarrow").write_parquet(
        str(dropped_dir), min_rows_per_file=ROWS_PER_FILE)
    dropped_files = _parquet_files(dropped_dir)
    dropped_by_source_reason = _count_by(dropped_files, ["source", "reason"])
    dropped_by_reason: Counter[str] = Counter()
    for (_, reason), count in dropped_by_source_reason.items():
        dropped_by_reason[reason] += count
    examples = _examples(dropped_files)
    read_by_source = {src: n for (src,), n in _count_by(_parquet_files(rows_dir), ["source"]).items()}
    num_read = sum(read_by_source.values())
    histogram, content_hash = _kept_histogram(kept_files, cfg.seed)
    num_kept = sum(histogram.values())

    if num_kept == 0:
        raise StageError("every row was dropped; nothing to train on. Relax curate.* or check the sources:\n"
                         + format_report(num_read, 0, dict(dropped_by_reason), examples))

    # 5. the deterministic train / eval split, written in one pass partitioned on the split
    num_eval = cfg.data.eval_size if cfg.data.eval_size is not None else round(num_kept * cfg.data.eval_fraction)
    num_eval = min(num_eval, num_kept - 1)
    cutoff = _eval_cutoff(kept_files, histogram, num_eval, cfg.seed)
    (selected.map_batches(to_output, batch_format="pyarrow", fn_kwargs={"seed": cfg.seed, "eval_cutoff": cutoff})
     .write_parquet(str(work / "split"), partition_cols=["split"]))
    split_files = {}
    for split in ("train", "eval"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for path in sorted((work / "split" / f"split={split}").glob("*.parquet")):
            shutil.move(str(path), out / split / path.name)
        split_files[split] = _parquet_files(out / split)
    train_files, eval_files = split_files["train"], split_files["eval"]
    kept_by_source = {src: n for (src,), n in _count_by(train_files + eval_files, ["source"]).items()}
    if (_written_rows(train_files), _written_rows(eval_files)) != (num_kept - num_eval, num_eval):
        raise StageError(f"accounting broke: wrote {_written_rows(train_files)} train and "
                         f"{_written_rows(eval_files)} eval rows, expected {num_kept - num_eval} and {num_eval}")

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
        per_source=per_source, content_hash=content_hash,
        config={"data": cfg.data.model_dump(mode="json"), "curate": settings.model_dump(mode="json")},
    )
    manifest.write(curated_manifest_path(cfg))
    shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(format_report(num_read, num_kept, manifest.dropped_by_reason, examples))
    return manifest
