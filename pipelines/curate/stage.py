"""The curate stage on Ray Data: instruction data of any shape -> clean train / eval Parquet and a manifest.

    raylora demo-assets configs/demo.yaml     # the sample data with planted defects
    raylora curate configs/demo.yaml          # -> <workdir>/curated/{train,eval,dropped}/*.parquet + manifest.json

``curate`` runs five phases, one function each: read and filter (readers, formats, filters,
decontamination), dedup, select (the optional quality top-k and diversity selection), account (every
dropped row written with its reason, every row counted, repeated user ids found) and write (the
deterministic train / eval split and the manifest). Every row read ends in exactly one of train, eval or
dropped, per source; the train and tune stages read only the manifest. Each phase writes Parquet under
``_work`` and the next reads it back, so the pipeline streams instead of holding rows in RAM.

Curation writes into a staging directory beside ``curate.output_dir`` and swaps it in only when it
succeeded, so a failed run leaves the last good output as it was; it never deletes a directory it did not
write.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster.runtime_env import ensure_ray
from pipelines.artifacts import MANIFEST_FILE, DatasetManifest
from pipelines.config import CurateConfig, RayloraConfig
from pipelines.curate.decontaminate import ContaminationFilter, EvalIndex, build_eval_index
from pipelines.curate.dedup import KEYS_TYPE, DedupSpec, dedup_keys, dedup_spec, mark_duplicates
from pipelines.curate.filters import (
    Filter,
    build_filters,
    chat_token_counter,
    first_failures,
    length_model,
    token_limit,
)
from pipelines.curate.formats import ROW_SCHEMA
from pipelines.curate.raydata import (
    count_by,
    parquet_files,
    ray_data_logs,
    read_parquet_dir,
    repeated_values,
    scan,
    shuffle_partitions,
    union,
    written_rows,
)
from pipelines.curate.readers import chunk_items, plan_chunks, read_chunk_batch
from pipelines.curate.reasons import KEPT, REASONS
from pipelines.curate.select import diversity_split, embedding_model_path, quality_split
from pipelines.curate.split import eval_cutoff, kept_histogram, split_hash, to_output
from pipelines.errors import ConfigError, StageError

DROPPED_SCHEMA = pa.schema([("id", pa.string()), ("user_id", pa.string()), ("source", pa.string()),
                            ("reason", pa.string()), ("detail", pa.string())])
KEPT_ROWS, DROPPED_ROWS = f"reason == '{KEPT}'", f"reason != '{KEPT}'"  # Ray Data filter expressions
ROWS_PER_FILE = 100_000
OUTPUT_ENTRIES = {"train", "eval", "dropped", "_work", MANIFEST_FILE}  # all that a curation output holds


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
    reason (and one example each), the kept rows' split-key histogram, and the user ids on several rows."""

    read_by_source: dict[str, int]
    dropped_by_source_reason: Counter[tuple[str, ...]]
    dropped_files: list[str]
    examples: dict[str, str]
    kept_histogram: Counter[int]
    repeated_user_ids: dict[str, Any]

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

    out = cfg.path(cfg.curate.output_dir)
    check_replaceable(out)
    ensure_ray(cfg)
    staging = out.with_name(f".{out.name}.staging")  # a crashed run's staging is cleared by the next
    shutil.rmtree(staging, ignore_errors=True)
    work = staging / "_work"
    dedup = dedup_spec(cfg.curate)
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)))
    try:
        with shuffle_partitions(partitions), ray_data_logs(verbose):
            read = read_and_filter(cfg, dedup, work / "rows")
            unique = deduplicate(read, dedup, work / "deduped")
            chosen = select_rows(unique, cfg.curate, work / "scored")
            accounts = account(read.files, chosen, staging / "dropped", cfg.seed)
            manifest = write_splits(cfg, chosen, accounts, work / "split", staging)
        shutil.rmtree(work)
        manifest = moved(manifest, staging, out)
        manifest.write(staging / MANIFEST_FILE)
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(format_report(accounts.num_read, accounts.num_kept, accounts.dropped_by_reason, accounts.examples,
                            accounts.repeated_user_ids))
    return manifest


# --- the output: replaced whole, and only when curation succeeded -----------------------------------------

def check_replaceable(out: Path) -> None:
    """Fail, before any work, when ``out`` holds anything a curation did not write (curation replaces it)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise StageError(f"curate.output_dir {out} is a file or a link, and curation replaces its output whole: "
                         "point curate.output_dir at a new directory")
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in OUTPUT_ENTRIES) if out.is_dir() \
        else []
    if foreign:
        raise StageError(f"curate.output_dir {out} holds files curation did not write ({', '.join(foreign[:3])}), "
                         "and curation replaces its output whole: point curate.output_dir at a new directory")


def moved(manifest: DatasetManifest, staging: Path, out: Path) -> DatasetManifest:
    """The manifest with its paths where the files will be once ``staging`` becomes ``out``."""
    def relocate(paths: list[str]) -> list[str]:
        return [str(out / Path(path).relative_to(staging)) for path in paths]

    return dataclasses.replace(manifest, train_paths=relocate(manifest.train_paths),
                               eval_paths=relocate(manifest.eval_paths),
                               dropped_paths=relocate(manifest.dropped_paths))


def swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` with two renames; the old output is deleted only once the new one is
    in place (put back if the second rename fails; a crash in between leaves it as ``.<name>.old``)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- 1. read and filter -------------------------------------------------------------------------------

def read_and_filter(cfg: RayloraConfig, dedup: DedupSpec | None, rows_dir: Path) -> Rows:
    """Read every source, run the filter chain and decontamination, and give each row that passed its dedup
    bucket keys: one streaming pass that writes every row read with its reason."""
    import ray.data

    chunks = plan_chunks(cfg.data.sources)
    checks = {"curate": cfg.curate.model_dump(), "eval_index": load_eval_index(cfg),
              "model": length_model(cfg), "max_tokens": token_limit(cfg), "dedup": dedup}
    # One task per read chunk: Ray fuses these ops and bundles their input (one row per chunk) up to the
    # largest batch_size or min_rows_per_file, so either would put every chunk into one task on one core.
    try:
        (ray.data.from_items(chunk_items(chunks), override_num_blocks=max(len(chunks), 1))
         .map_batches(read_chunk_batch, batch_size=1)
         .map_batches(filter_batch, batch_format="pyarrow", batch_size=None, fn_kwargs=checks)
         .write_parquet(str(rows_dir)))
    except Exception as err:  # a Ray task wraps the error of a source it could not open (hf://, remote) or
        # of a model whose tokenizer it could not load (e.g. no chat template): the line naming the fix
        for kind in (ConfigError, StageError):
            said = [line for line in str(err).splitlines() if f"{kind.__name__}: " in line]
            if said:
                raise kind(said[-1].split(f"{kind.__name__}: ")[-1].strip()) from err
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


def filter_chain(curate: CurateConfig, model: str, max_tokens: int, eval_index: EvalIndex | None) -> list[Filter]:
    """The checks every row goes through, in order: the configured filters (the length filter renders with
    ``model``, the JSON of a model section), then decontamination."""
    chain = build_filters(curate, chat_token_counter(model), max_tokens)
    return chain if eval_index is None else [*chain, ContaminationFilter(eval_index)]


def filter_batch(batch: pa.Table, curate: dict, model: str, max_tokens: int,
                 eval_index: EvalIndex | None, dedup: DedupSpec | None) -> pa.Table:
    """Ray ``map_batches`` UDF: set ``reason`` on each row the filter chain drops, and give every row that
    passed its dedup bucket keys (``dedup_keys``) while its conversation is parsed anyway."""
    chain = filter_chain(CurateConfig.model_validate(curate), model, max_tokens, eval_index)
    read_ok = [reason == KEPT for reason in batch.column("reason").to_pylist()]  # not malformed at read time
    conversations = [json.loads(raw) if ok else None
                     for raw, ok in zip(batch.column("messages").to_pylist(), read_ok, strict=True)]
    verdicts = first_failures(conversations, chain)
    reasons = [verdict if ok else reason
               for verdict, ok, reason in zip(verdicts, read_ok, batch.column("reason").to_pylist(), strict=True)]
    passed = [messages if reason == KEPT else None for messages, reason in zip(conversations, reasons, strict=True)]
    batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    if dedup is None:
        return batch
    return batch.append_column("dedup_keys", dedup_keys(passed, dedup))


# --- 2. dedup -------------------------------------------------------------------------------------------

def deduplicate(rows: Rows, dedup: DedupSpec | None, deduped_dir: Path) -> Rows:
    """Mark exact and near duplicates across the whole dataset by content; each cluster keeps its first row
    by (user id, internal key)."""
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
                        kept_histogram=histogram, repeated_user_ids=repeated_values(read_files, "user_id"))
    if accounts.num_kept == 0:
        raise StageError("every row was dropped; nothing to train on. Relax curate.* or check the sources:\n"
                         + format_report(accounts.num_read, 0, accounts.dropped_by_reason, accounts.examples))
    return accounts


def to_dropped(batch: pa.Table) -> pa.Table:
    """Ray UDF: dropped rows -> the dropped Parquet schema (no messages)."""
    return batch.select(list(DROPPED_SCHEMA.names)).cast(DROPPED_SCHEMA)


def drop_examples(dropped_files: list[str]) -> dict[str, str]:
    """One example per drop reason, for the report: the user's id (else the row's key) and the detail."""
    examples: dict[str, str] = {}
    for table in scan(dropped_files, ["id", "user_id", "reason", "detail"]):
        for key, user_id, reason, detail in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
            examples.setdefault(reason, f"{user_id or key}" + (f" ({detail})" if detail else ""))
    return examples


def format_report(read: int, kept: int, dropped_by_reason: dict[str, int], examples: dict[str, str],
                  repeated_user_ids: dict[str, Any] | None = None) -> str:
    """The human summary: counts, a table of drop reasons with what each means and one example, and the
    user ids that more than one row carries."""
    lines = [f"curated {read} rows: kept {kept}, dropped {read - kept}",
             f"  {'reason':<16} {'count':>7}  {'meaning':<50}  example"]
    for reason, count in sorted(dropped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<16} {count:>7}  {REASONS[reason]:<50}  {examples.get(reason, '')[:70]}".rstrip())
    if repeated_user_ids and repeated_user_ids["ids"]:
        shown = ", ".join(f"{user_id!r} x{n}" for user_id, n in repeated_user_ids["examples"].items())
        lines.append(f"note: {repeated_user_ids['ids']} ids are on more than one row ({repeated_user_ids['rows']} "
                     f"rows; e.g. {shown}); every row is kept apart by its key <file>:<line>, and dedup compares "
                     "content, not ids")
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
        repeated_user_ids=accounts.repeated_user_ids,
    )
