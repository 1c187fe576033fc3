"""The curate stage on Ray Data: instruction data of any shape -> clean train / eval Parquet and a manifest.

    raylora demo-assets configs/demo.yaml     # the sample data with planted defects
    raylora curate configs/demo.yaml          # -> <workdir>/curated/{train,eval,dropped}/*.parquet + manifest.json

``curate`` runs five phases, one function each: read and filter (formats, filters, decontamination),
dedup, select (the optional quality top-k and diversity selection), account (every dropped row written
with its reason, every row counted) and write (the deterministic train / eval split and the manifest).
Every row read ends in exactly one of train, eval or dropped, per source; the train and tune stages read
only the manifest. Each phase writes Parquet under ``<output>/_work`` and the next reads it back, so the
pipeline streams instead of holding rows in RAM.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.runtime_env import ensure_ray
from pipelines.artifacts import DatasetManifest, curated_manifest_path
from pipelines.config import CurateConfig, RayloraConfig
from pipelines.curate.decontaminate import ContaminationFilter, EvalIndex, build_eval_index
from pipelines.curate.dedup import KEYS_TYPE, DedupSpec, dedup_keys, dedup_spec, mark_duplicates
from pipelines.curate.filters import (
    Filter,
    build_filters,
    first_failure,
    length_tokenizer,
    token_counter,
    token_limit,
)
from pipelines.curate.formats import ROW_SCHEMA, chunk_items, plan_chunks, read_chunk_batch
from pipelines.curate.raydata import (
    count_by,
    parquet_files,
    ray_data_logs,
    read_parquet_dir,
    scan,
    shuffle_partitions,
    union,
    written_rows,
)
from pipelines.curate.reasons import KEPT, REASONS
from pipelines.curate.select import diversity_split, embedding_model_path, quality_split
from pipelines.errors import StageError

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
OUTPUT_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("messages", MESSAGES_TYPE)])
DROPPED_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                            ("detail", pa.string())])
KEPT_ROWS, DROPPED_ROWS = f"reason == '{KEPT}'", f"reason != '{KEPT}'"  # Ray Data filter expressions
ROWS_PER_FILE = 100_000
BUCKET_SHIFT = 47  # split keys are 63-bit hashes: their top 16 bits name one of 65536 buckets
DIGEST_MODULUS = 1 << 256


@dataclass(frozen=True)
class Rows:
    """What a phase hands the next: ``kept``, a Ray Dataset of the rows no check has dropped yet;
    ``files``, the Parquet files holding them (beside the rows the phase that wrote them dropped);
    ``dropped``, Ray Datasets of every row dropped so far, each with its reason."""

    kept: Any
    files: list[str]
    dropped: list[Any]


@dataclass(frozen=True)
class Accounts:
    """A run's counts, taken from the written files: rows read per source, rows dropped per source and
    reason (and one example each), and the kept rows' split-key histogram."""

    read_by_source: dict[str, int]
    dropped_by_source_reason: Counter[tuple[str, ...]]
    dropped_files: list[str]
    examples: dict[str, str]
    kept_histogram: Counter[int]

    @property
    def num_read(self) -> int:
        return sum(self.read_by_source.values())

    @property
    def num_kept(self) -> int:
        return sum(self.kept_histogram.values())

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (_, reason), count in self.dropped_by_source_reason.items():
            totals[reason] += count
        return dict(sorted(totals.items()))

    def per_source(self, kept_by_source: dict[str, int]) -> dict[str, dict[str, int]]:
        """Read, kept and dropped rows of each source; fails unless read = kept + dropped for every one."""
        counts: dict[str, dict[str, int]] = {}
        for source, read in sorted(self.read_by_source.items()):
            kept = kept_by_source.get(source, 0)
            lost = sum(n for (src, _), n in self.dropped_by_source_reason.items() if src == source)
            counts[source] = {"read": read, "kept": kept, "dropped": lost}
            if read != kept + lost:
                raise StageError(f"accounting broke for source {source}: read {read} != kept {kept} + dropped {lost}")
        return counts


def curate(cfg: RayloraConfig, *, quiet: bool = False, verbose: bool = False) -> DatasetManifest:
    """Run curation for ``cfg``; returns the manifest (also written to ``<output>/manifest.json``).

    ``verbose`` shows Ray Data's progress bars and per-execution INFO logs (hidden otherwise).
    """
    import ray

    ensure_ray(cfg, log_to_driver=False)
    out = cfg.path(cfg.curate.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    work = out / "_work"
    dedup = dedup_spec(cfg.curate)
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)))
    with shuffle_partitions(partitions), ray_data_logs(verbose):
        read = read_and_filter(cfg, dedup, work / "rows")
        unique = deduplicate(read, dedup, work / "deduped")
        chosen = select_rows(unique, cfg.curate, work / "scored")
        accounts = account(read.files, chosen, out / "dropped", cfg.seed)
        manifest = write_splits(cfg, chosen, accounts, work / "split", out)
    manifest.write(curated_manifest_path(cfg))
    shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(format_report(accounts.num_read, accounts.num_kept, accounts.dropped_by_reason, accounts.examples))
    return manifest


# --- 1. read and filter -------------------------------------------------------------------------------

def read_and_filter(cfg: RayloraConfig, dedup: DedupSpec | None, rows_dir: Path) -> Rows:
    """Read every source, run the filter chain and decontamination, and give each row that passed its dedup
    bucket keys: one streaming pass that writes every row read with its reason."""
    import ray.data

    chunks = plan_chunks(cfg.data.sources)
    checks = {"curate": cfg.curate.model_dump(), "eval_index": load_eval_index(cfg),
              "tokenizer": length_tokenizer(cfg), "max_tokens": token_limit(cfg), "dedup": dedup}
    # One task per read chunk: Ray fuses these ops and bundles their input (one row per chunk) up to the
    # largest batch_size or min_rows_per_file, so either would put every chunk into one task on one core.
    try:
        (ray.data.from_items(chunk_items(chunks), override_num_blocks=max(len(chunks), 1))
         .map_batches(read_chunk_batch, batch_size=1)
         .map_batches(filter_batch, batch_format="pyarrow", batch_size=None, fn_kwargs=checks)
         .write_parquet(str(rows_dir)))
    except Exception as err:  # a Ray task wraps the StageError of a source it could not open (hf://, remote)
        opening = [line for line in str(err).splitlines() if "cannot open data source" in line]
        if opening:
            raise StageError(opening[-1].split("StageError: ")[-1].strip()) from err
        raise
    rows = read_parquet_dir(rows_dir, ROW_SCHEMA if dedup is None else ROW_SCHEMA.append(
        pa.field("dedup_keys", KEYS_TYPE)))
    return Rows(kept=rows.filter(expr=KEPT_ROWS), files=parquet_files(rows_dir),
                dropped=[rows.filter(expr=DROPPED_ROWS).select_columns(list(ROW_SCHEMA.names))])


def load_eval_index(cfg: RayloraConfig) -> EvalIndex | None:
    """The index of ``data.eval_sets`` that decontamination checks rows against; None when it is off."""
    if not cfg.data.eval_sets or not cfg.curate.decontaminate_ngram:
        return None
    try:
        return build_eval_index(cfg.data.eval_sets, cfg.curate.decontaminate_ngram)
    except (OSError, ValueError) as err:
        raise StageError(f"cannot read eval set for decontamination: {err} (check data.eval_sets)") from err


def filter_chain(curate: CurateConfig, tokenizer: str | None, max_tokens: int,
                 eval_index: EvalIndex | None) -> list[Filter]:
    """The checks every row goes through, in order: the configured filters, then decontamination."""
    chain = build_filters(curate, token_counter(tokenizer) if tokenizer else None, max_tokens)
    return chain if eval_index is None else [*chain, ContaminationFilter(eval_index)]


def filter_batch(batch: pa.Table, curate: dict, tokenizer: str | None, max_tokens: int,
                 eval_index: EvalIndex | None, dedup: DedupSpec | None) -> pa.Table:
    """Ray ``map_batches`` UDF: set ``reason`` on each row the filter chain drops, and give every row that
    passed its dedup bucket keys (``dedup_keys``) while its conversation is parsed anyway."""
    chain = filter_chain(CurateConfig.model_validate(curate), tokenizer, max_tokens, eval_index)
    reasons = batch.column("reason").to_pylist()
    passed: list[list[dict[str, str]] | None] = [None] * batch.num_rows
    for i, raw in enumerate(batch.column("messages").to_pylist()):
        if reasons[i] != KEPT:
            continue  # malformed at read time
        messages = json.loads(raw)
        reasons[i] = first_failure(messages, chain)
        if reasons[i] == KEPT:
            passed[i] = messages
    batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    if dedup is None:
        return batch
    return batch.append_column("dedup_keys", dedup_keys(passed, dedup))


# --- 2. dedup -------------------------------------------------------------------------------------------

def deduplicate(rows: Rows, dedup: DedupSpec | None, deduped_dir: Path) -> Rows:
    """Mark exact and near duplicates across the whole dataset; each cluster keeps its smallest id."""
    if dedup is None:
        return rows
    mark_duplicates(rows.kept, dedup).write_parquet(str(deduped_dir), min_rows_per_file=ROWS_PER_FILE)
    marked = read_parquet_dir(deduped_dir, ROW_SCHEMA)
    return Rows(kept=marked.filter(expr=KEPT_ROWS), files=parquet_files(deduped_dir),
                dropped=[*rows.dropped, marked.filter(expr=DROPPED_ROWS)])


# --- 3. select ------------------------------------------------------------------------------------------

def select_rows(rows: Rows, settings: CurateConfig, scored_dir: Path) -> Rows:
    """The optional LIMA-style selection: the quality top-k, then the most diverse of those."""
    if settings.quality_top_k is None and settings.diversity_select is None:
        return rows
    chosen, rejected = rows.kept, []
    if settings.quality_top_k is not None:
        chosen, below_top_k = quality_split(chosen, settings.quality_top_k)
        if below_top_k is not None:
            rejected.append(below_top_k)
    if settings.diversity_select is not None:
        chosen, not_diverse = diversity_split(chosen, settings.diversity_select,
                                              embedding_model_path(settings.embedding_model))
        rejected.append(not_diverse)
    chosen.write_parquet(str(scored_dir), min_rows_per_file=ROWS_PER_FILE)
    return Rows(kept=read_parquet_dir(scored_dir, ROW_SCHEMA), files=parquet_files(scored_dir),
                dropped=[*rows.dropped, *rejected])


# --- 4. account -----------------------------------------------------------------------------------------

def account(read_files: list[str], rows: Rows, dropped_dir: Path, seed: int) -> Accounts:
    """Write every dropped row in one write, then count what was read, dropped and kept from the written
    files' key columns. Fails, with the table of drop reasons, when no row is kept."""
    dropped_dir.mkdir(parents=True, exist_ok=True)
    union(rows.dropped).map_batches(to_dropped, batch_format="pyarrow").write_parquet(
        str(dropped_dir), min_rows_per_file=ROWS_PER_FILE)
    dropped_files = parquet_files(dropped_dir)
    histogram = kept_histogram(rows.files, seed)
    accounts = Accounts(read_by_source={src: n for (src,), n in count_by(read_files, ["source"]).items()},
                        dropped_by_source_reason=count_by(dropped_files, ["source", "reason"]),
                        dropped_files=dropped_files, examples=drop_examples(dropped_files),
                        kept_histogram=histogram)
    if accounts.num_kept == 0:
        raise StageError("every row was dropped; nothing to train on. Relax curate.* or check the sources:\n"
                         + format_report(accounts.num_read, 0, accounts.dropped_by_reason, accounts.examples))
    return accounts


def to_dropped(batch: pa.Table) -> pa.Table:
    """Ray UDF: dropped rows -> the dropped Parquet schema (no messages)."""
    return batch.select(list(DROPPED_SCHEMA.names)).cast(DROPPED_SCHEMA)


def split_keys(ids: list[str], seed: int) -> np.ndarray:
    """The deterministic split key of each id: a hash of seed and id (a random, fixed order of the rows)."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") >> 1
                     for i in ids], dtype=np.int64)


def kept_histogram(kept_files: list[str], seed: int) -> Counter[int]:
    """Kept rows per split-key bucket."""
    histogram: Counter[int] = Counter()
    for table in scan(kept_files, ["id", "reason"], kept_only=True):
        histogram.update((split_keys(table.column("id").to_pylist(), seed) >> BUCKET_SHIFT).tolist())
    return histogram


def split_hash(split_files: list[str]) -> str:
    """The hash that identifies a written split: sha256 over the row count and the sum of the rows' sha256
    digests of (id, messages) modulo 2^256, which no row order or file layout changes."""
    import pyarrow.parquet as pq

    digest_sum, count = 0, 0
    for path in split_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "messages"], batch_size=65_536):
            for row_id, messages in zip(batch.column("id").to_pylist(), batch.column("messages").to_pylist(),
                                        strict=True):
                text = row_id + "\0" + json.dumps(messages, ensure_ascii=False, sort_keys=True)
                digest_sum += int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")
                count += 1
    return hashlib.sha256(f"{count}:".encode() + (digest_sum % DIGEST_MODULUS).to_bytes(32, "big")).hexdigest()


def drop_examples(dropped_files: list[str]) -> dict[str, str]:
    """One example (id and detail) per drop reason, for the report."""
    examples: dict[str, str] = {}
    for table in scan(dropped_files, ["id", "reason", "detail"]):
        for row_id, reason, detail in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True):
            examples.setdefault(reason, f"{row_id}" + (f" ({detail})" if detail else ""))
    return examples


def format_report(read: int, kept: int, dropped_by_reason: dict[str, int], examples: dict[str, str]) -> str:
    """The human summary: counts, then a table of drop reasons with what each means and one example."""
    lines = [f"curated {read} rows: kept {kept}, dropped {read - kept}",
             f"  {'reason':<16} {'count':>7}  {'meaning':<50}  example"]
    for reason, count in sorted(dropped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<16} {count:>7}  {REASONS[reason]:<50}  {examples.get(reason, '')[:70]}".rstrip())
    return "\n".join(lines)


# --- 5. write -------------------------------------------------------------------------------------------

def write_splits(cfg: RayloraConfig, rows: Rows, accounts: Accounts, split_dir: Path, out: Path) -> DatasetManifest:
    """The deterministic train / eval split of the kept rows, written in one pass partitioned on the split
    and checked against the counts; returns the manifest that records it."""
    num_kept = accounts.num_kept
    num_eval = cfg.data.eval_size if cfg.data.eval_size is not None else round(num_kept * cfg.data.eval_fraction)
    num_eval = min(num_eval, num_kept - 1)
    cutoff = eval_cutoff(rows.files, accounts.kept_histogram, num_eval, cfg.seed)
    (rows.kept.map_batches(to_output, batch_format="pyarrow", fn_kwargs={"seed": cfg.seed, "cutoff": cutoff})
     .write_parquet(str(split_dir), partition_cols=["split"]))
    split_files = {}
    for split in ("train", "eval"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for path in sorted((split_dir / f"split={split}").glob("*.parquet")):
            shutil.move(str(path), out / split / path.name)
        split_files[split] = parquet_files(out / split)
    train_files, eval_files = split_files["train"], split_files["eval"]
    if (written_rows(train_files), written_rows(eval_files)) != (num_kept - num_eval, num_eval):
        raise StageError(f"accounting broke: wrote {written_rows(train_files)} train and "
                         f"{written_rows(eval_files)} eval rows, expected {num_kept - num_eval} and {num_eval}")
    kept_by_source = {src: n for (src,), n in count_by(train_files + eval_files, ["source"]).items()}
    return DatasetManifest(
        train_paths=train_files, eval_paths=eval_files, dropped_paths=accounts.dropped_files,
        num_read=accounts.num_read, num_train=num_kept - num_eval, num_eval=num_eval,
        num_dropped=sum(accounts.dropped_by_reason.values()), dropped_by_reason=accounts.dropped_by_reason,
        per_source=accounts.per_source(kept_by_source), train_hash=split_hash(train_files),
        eval_hash=split_hash(eval_files),
        config={"data": cfg.data.model_dump(mode="json"), "curate": cfg.curate.model_dump(mode="json")},
    )


def eval_cutoff(kept_files: list[str], histogram: Counter[int], num_eval: int, seed: int) -> int:
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
    for table in scan(kept_files, ["id", "reason"], kept_only=True):
        split = split_keys(table.column("id").to_pylist(), seed)
        keys.extend(split[(split >> BUCKET_SHIFT) == bucket].tolist())
    return sorted(keys)[num_eval - below - 1] + 1


def to_output(batch: pa.Table, seed: int, cutoff: int) -> pa.Table:
    """Ray UDF: kept rows -> the canonical Parquet schema the train stage reads, plus the ``split`` (train or
    eval: eval holds the rows whose split key is below the cutoff) the write partitions on."""
    messages = [json.loads(m) for m in batch.column("messages").to_pylist()]
    is_eval = split_keys(batch.column("id").to_pylist(), seed) < cutoff
    return pa.table({"id": batch.column("id"), "source": batch.column("source"),
                     "messages": pa.array(messages, MESSAGES_TYPE),
                     "split": pa.array(np.where(is_eval, "eval", "train"), pa.string())},
                    schema=OUTPUT_SCHEMA.append(pa.field("split", pa.string())))
