"""The curate stage on Ray Data: instruction data of any shape -> clean train / eval Parquet and a manifest.

    raylora demo-assets configs/demo.yaml     # the sample data with planted defects
    raylora curate configs/demo.yaml          # -> <workdir>/curated/{train,eval,dropped}/*.parquet + manifest.json

``curate`` runs five phases, one function each: read and filter (readers, formats, filters,
decontamination), dedup, select (the optional quality top-k and diversity selection), account (every
dropped row written with its reason, every row counted, repeated user ids found) and write (the
deterministic train / eval split and the manifest). Every row read ends in exactly one of train, eval or
dropped, per source; the train and tune stages read only the manifest.

Rows are read, parsed and filtered once, in parallel Ray tasks that also give each row that passed its
dedup bucket keys, split key and digest, and written once under ``_work``. After that no phase moves a
whole row until the split is written: the driver finds duplicates, counts, cuts and hashes the split from
those small columns (a few dozen bytes a row), and the later phases read the rows back lazily, leaving
out the ids dedup dropped. So the pipeline streams, and no full row is sorted or shuffled.

Curation writes into a staging directory beside ``curate.output_dir`` and swaps it in only when it
succeeded, so a failed run leaves the last good output as it was; it never deletes a directory it did not
write.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.runtime_env import ensure_ray
from pipelines.artifacts import MANIFEST_FILE, DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.curate.chain import (
    chain_spec,
    filter_batch,
)
from pipelines.curate.dedup import (
    DedupSpec,
    dedup_spec,
    find_duplicates,
    keeper_order,
)
from pipelines.curate.embeddings import embedding_model_path
from pipelines.curate.formats import ROW_SCHEMA
from pipelines.curate.inputs import check_local_inputs, finished_output, input_fingerprint
from pipelines.curate.kept_rows import kept_columns, key_matrix, scan_kept, shingle_sets, without_ids
from pipelines.curate.output_dir import check_replaceable, moved, swap_in
from pipelines.curate.phase_rows import DROPPED_SCHEMA, Accounts, DroppedInFiles, KeptKeys, Rows
from pipelines.curate.raydata import (
    PartWriter,
    count_by,
    parquet_files,
    ray_data_logs,
    read_parquet_dir,
    repeated_values,
    shuffle_partitions,
    written_rows,
)
from pipelines.curate.readers import chunk_items, plan_chunks, read_chunk_batch, source_name
from pipelines.curate.reasons import KEPT
from pipelines.curate.report import drop_examples, format_report, source_warnings
from pipelines.curate.select import diversity_split, over_quota, quality_split
from pipelines.curate.split import (
    CHAT,
    DIGEST_TYPE,
    MESSAGES_TYPE,
    OUTPUT_SCHEMA,
    ROW_DIGEST,
    SPLIT_KEY,
    digest_hash,
    eval_cutoff,
    is_eval,
    output_tables,
    split_columns,
)
from pipelines.curate.timing import format_filter_seconds, start_clock
from pipelines.errors import ConfigError, StageError

KEPT_SCHEMA = pa.schema([*ROW_SCHEMA, pa.field(SPLIT_KEY, pa.int64()), pa.field(ROW_DIGEST, DIGEST_TYPE),
                         pa.field(CHAT, MESSAGES_TYPE)])
KEPT_ROWS = f"reason == '{KEPT}'"  # a Ray Data filter expression
ROWS_PER_FILE = 100_000
PHASES = ("read+filter", "dedup", "select", "account", "write")


def curate(cfg: RayloraConfig, *, quiet: bool = False, verbose: bool = False,
           phase_seconds: dict[str, float] | None = None, reuse: bool = True) -> DatasetManifest:
    """Run curation for ``cfg``; returns the manifest (also written to ``<output>/manifest.json``).

    When the output holds a manifest of the same inputs (config and file contents, see ``inputs.py``) and
    ``reuse`` is true, that manifest is returned with a line saying so. ``verbose`` shows Ray Data's progress
    bars and per-execution INFO logs (hidden otherwise); ``phase_seconds``, when given, receives the wall
    seconds of each of ``PHASES``.
    """
    import ray

    check_local_inputs(cfg)
    out = cfg.path(cfg.curate.output_dir)
    fingerprint, unhashable = input_fingerprint(cfg)
    if reuse and (done := finished_output(out, fingerprint)):
        print(f"raylora curate: {out} already holds the curation of these inputs ({fingerprint.digest}): "
              f"train {done.num_train}, eval {done.num_eval}, dropped {done.num_dropped}; reused", flush=True)
        return done
    if unhashable and not quiet:
        print(f"raylora curate: {unhashable}, so its output is never reused: curating", flush=True)
    check_replaceable(out)
    ensure_ray(cfg)
    staging = out.with_name(f".{out.name}.staging")  # a crashed run's staging is cleared by the next
    shutil.rmtree(staging, ignore_errors=True)
    work = staging / "_work"
    dedup = dedup_spec(cfg.curate)
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)))
    seconds = phase_seconds if phase_seconds is not None else {}
    try:
        with shuffle_partitions(partitions), ray_data_logs(verbose):
            with timed(seconds, "read+filter"):
                read = read_and_filter(cfg, dedup, work / "rows")
            with timed(seconds, "dedup"):
                unique = deduplicate(read, dedup)
            with timed(seconds, "select"):
                chosen = select_rows(unique, cfg, work / "scored")
            with timed(seconds, "account"):
                accounts = account(read.files, chosen, staging / "dropped", cfg.seed)
            with timed(seconds, "write"):
                manifest = write_splits(cfg, chosen, accounts, staging)
        shutil.rmtree(work)
        manifest = dataclasses.replace(moved(manifest, staging, out), fingerprint=fingerprint.digest if fingerprint else "")
        manifest.write(staging / MANIFEST_FILE)
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(format_report(accounts.num_read, accounts.num_kept, accounts.dropped_by_reason, accounts.examples,
                            accounts.repeated_user_ids))
        print(format_filter_seconds(read.filter_seconds, accounts.num_read))
        for line in source_warnings(manifest.per_source, accounts.dropped_by_source_reason):
            print(line)
    return manifest



@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = time.perf_counter() - start


# --- the output: replaced whole, and only when curation succeeded -----------------------------------------

def read_and_filter(cfg: RayloraConfig, dedup: DedupSpec | None, rows_dir: Path) -> Rows:
    """Read every source, run the filter chain and decontamination, and give each row that passed its dedup
    bucket keys, split key and digest: one streaming pass that writes every row read with its reason."""
    import ray.data

    chunks = plan_chunks(cfg.data.sources)
    clock = start_clock()
    checks = {"chain": chain_spec(cfg), "dedup": dedup, "seed": cfg.seed, "clock": clock}
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
    kept = read_parquet_dir(rows_dir, KEPT_SCHEMA, KEPT_SCHEMA.names).filter(expr=KEPT_ROWS)
    files = parquet_files(rows_dir)
    return Rows(kept=kept, files=files, dropped=[DroppedInFiles(files)],
                filter_seconds=ray.get(clock.totals.remote()))


def deduplicate(rows: Rows, dedup: DedupSpec | None) -> Rows:
    """Mark exact and near duplicates across the whole dataset by content, from the rows' bucket keys alone
    (``dedup.find_duplicates``); each cluster keeps its first row by (user id, internal key). The rows
    files are not rewritten: the duplicates' ids are left out of ``kept`` as it streams."""
    if dedup is None:
        return rows
    tables, key_chunks = [], []
    for table in scan_kept(rows.files, ["id", "user_id", "source", "dedup_keys"]):
        if table.num_rows == 0:
            continue
        key_chunks.append(key_matrix(table.column("dedup_keys")))  # a row group's keys: flat int64, no lists
        tables.append(table.drop_columns(["dedup_keys"]))
    table = pa.concat_tables(tables) if tables else DROPPED_SCHEMA.empty_table()
    order = keeper_order(table.column("user_id"), table.column("id"))
    keys = np.concatenate(key_chunks)[order] if key_chunks else np.zeros((0, 0), np.int64)
    del key_chunks
    table = table.take(order)
    found = find_duplicates(keys, dedup, lambda positions: shingle_sets(
        rows.files, table.column("id").take(pa.array(positions)), positions, dedup.shingle_words))
    duplicates = table.take(pa.array(found.rows, pa.int64()))
    keepers = table.column("id").take(pa.array(found.keepers, pa.int64())).to_pylist()
    duplicates = pa.table({"id": duplicates.column("id"), "user_id": duplicates.column("user_id"),
                           "source": duplicates.column("source"), "reason": pa.array(found.reasons(), pa.string()),
                           "detail": pa.array([f"duplicate of {keeper}" for keeper in keepers], pa.string())},
                          schema=DROPPED_SCHEMA)
    dropped_ids = duplicates.column("id").combine_chunks()
    kept = rows.kept.map_batches(without_ids, batch_format="pyarrow", fn_kwargs={"ids": dropped_ids}) \
        if len(dropped_ids) else rows.kept
    return Rows(kept=kept, files=rows.files, dropped=[*rows.dropped, duplicates], dropped_ids=dropped_ids)


# --- 3. select ------------------------------------------------------------------------------------------

def select_rows(rows: Rows, cfg: RayloraConfig, scored_dir: Path) -> Rows:
    """Each source's cap and weighted share (``data.sources[*].max_rows`` / ``weight``), then the optional
    LIMA-style selection from that mix: the quality top-k, then the most diverse of those."""
    rows = source_control(rows, cfg)
    settings = cfg.curate
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


def source_control(rows: Rows, cfg: RayloraConfig) -> Rows:
    """Drop the rows beyond each source's ``max_rows`` and weighted share (``select.over_quota``, decided on
    the driver from the kept rows' ids and sources). Like dedup it does not rewrite the rows files: the
    dropped ids are left out of ``kept`` as it streams."""
    import ray.data

    sources = cfg.data.sources
    caps = {source_name(source, index): source.max_rows for index, source in enumerate(sources)}
    weights = {source_name(source, index): source.weight for index, source in enumerate(sources)} \
        if sources[0].weight is not None else None  # set on every source or none (DataConfig checks)
    if not any(caps.values()) and weights is None:
        return rows
    table = kept_columns(rows.files, ["id", "user_id", "source"], rows.dropped_ids)
    over = over_quota(table.column("id").to_pylist(), table.column("source").to_pylist(), caps, weights, cfg.seed)
    reason_of = {row_id: reason for reason, ids in over.items() for row_id in ids}
    if not reason_of:
        return rows
    left_out = table.filter(pc.is_in(table.column("id"), value_set=pa.array(list(reason_of), pa.string())))
    ids = left_out.column("id").to_pylist()
    dropped = pa.table({"id": left_out.column("id"), "user_id": left_out.column("user_id"),
                        "source": left_out.column("source"),
                        "reason": pa.array([reason_of[row_id] for row_id in ids], pa.string()),
                        "detail": pa.array([f"source {source}" for source in left_out.column("source").to_pylist()],
                                           pa.string())}, schema=DROPPED_SCHEMA)
    new_ids = dropped.column("id").combine_chunks()
    return Rows(kept=rows.kept.map_batches(without_ids, batch_format="pyarrow", fn_kwargs={"ids": new_ids}),
                files=rows.files, dropped=[*rows.dropped, ray.data.from_arrow(dropped)],
                dropped_ids=pa.concat_arrays([rows.dropped_ids.cast(pa.string()), new_ids]))


# --- 4. account -----------------------------------------------------------------------------------------

def account(read_files: list[str], rows: Rows, dropped_dir: Path, seed: int) -> Accounts:
    """Write every dropped row (streamed through the driver: its small columns only), then count what was
    read, dropped and kept from the written files' key columns. Fails, with the table of drop reasons, when
    no row is kept."""
    dropped_dir.mkdir(parents=True, exist_ok=True)
    writer = PartWriter(dropped_dir, DROPPED_SCHEMA, ROWS_PER_FILE)
    for part in rows.dropped:
        tables = part.tables() if isinstance(part, DroppedInFiles) else [part] if isinstance(part, pa.Table) \
            else part.iter_batches(batch_format="pyarrow")  # a Ray Dataset: a later phase's own drops
        for table in tables:
            writer.write(table)
    dropped_files = writer.close()
    accounts = Accounts(read_by_source={src: n for (src,), n in count_by(read_files, ["source"]).items()},
                        dropped_by_source_reason=count_by(dropped_files, ["source", "reason"]),
                        dropped_files=dropped_files, examples=drop_examples(dropped_files),
                        kept=kept_keys(rows, seed), repeated_user_ids=repeated_values(read_files, "user_id"))
    if accounts.num_read == 0:
        raise ConfigError("the sources hold no rows (every file of data.sources is empty): point data.sources at "
                          "files with rows")
    if accounts.num_kept == 0:
        raise StageError("every row was dropped; nothing to train on. Relax curate.* or check the sources:\n"
                         + format_report(accounts.num_read, 0, accounts.dropped_by_reason, accounts.examples))
    return accounts


def kept_keys(rows: Rows, seed: int) -> KeptKeys:
    """The kept rows' ids, split keys and digests, from the columns the read pass added (computed here from
    the conversations when a phase wrote files without them)."""
    if rows.files and not {SPLIT_KEY, ROW_DIGEST} <= set(pq.read_schema(rows.files[0]).names):
        table = kept_columns(rows.files, ["id", "user_id", "messages"], rows.dropped_ids)
        keys, digests = split_columns(table, seed)
        table = pa.table({"id": table.column("id"), SPLIT_KEY: keys, ROW_DIGEST: digests})
    else:
        table = kept_columns(rows.files, ["id", SPLIT_KEY, ROW_DIGEST], rows.dropped_ids)
    return KeptKeys(ids=table.column("id").combine_chunks(),
                    split_keys=table.column(SPLIT_KEY).to_numpy().astype(np.int64),
                    digests=table.column(ROW_DIGEST).combine_chunks())


# --- 5. write -------------------------------------------------------------------------------------------

def write_splits(cfg: RayloraConfig, rows: Rows, accounts: Accounts, out: Path) -> DatasetManifest:
    """The deterministic train / eval split of the kept rows, streamed from the rows files into train/ and
    eval/ with Arrow alone (the read pass left each row's output conversation and split key beside it) and
    checked against the counts; returns the manifest that records it (each split's hash summed from the
    kept rows' digests)."""
    kept, num_kept = accounts.kept, accounts.num_kept
    num_eval = cfg.data.eval_size if cfg.data.eval_size is not None else round(num_kept * cfg.data.eval_fraction)
    num_eval = min(num_eval, num_kept - 1)
    cutoff = eval_cutoff(kept.split_keys, kept.ids, num_eval)
    writers = {split: PartWriter(out / split, OUTPUT_SCHEMA, ROWS_PER_FILE) for split in ("train", "eval")}
    for split in writers:
        (out / split).mkdir(parents=True, exist_ok=True)  # an empty eval split is an empty directory
    present = set(pq.read_schema(rows.files[0]).names) if rows.files else set()
    columns = ["id", "user_id", "source", *(c for c in (SPLIT_KEY, CHAT) if c in present)]
    if CHAT not in present:
        columns.append("messages")
    for table in scan_kept(rows.files, columns, rows.dropped_ids):
        train, held_out = output_tables(table, cfg.seed, cutoff)
        writers["train"].write(train)
        writers["eval"].write(held_out)
    train_files, eval_files = writers["train"].close(), writers["eval"].close()
    if (written_rows(train_files), written_rows(eval_files)) != (num_kept - num_eval, num_eval):
        raise StageError(f"accounting broke: wrote {written_rows(train_files)} train and "
                         f"{written_rows(eval_files)} eval rows, expected {num_kept - num_eval} and {num_eval}")
    in_eval = pa.array(is_eval(kept.split_keys, kept.ids, cutoff))
    kept_by_source = {src: n for (src,), n in count_by(train_files + eval_files, ["source"]).items()}
    return DatasetManifest(
        train_paths=train_files, eval_paths=eval_files, dropped_paths=accounts.dropped_files,
        num_read=accounts.num_read, num_train=num_kept - num_eval, num_eval=num_eval,
        num_dropped=sum(accounts.dropped_by_reason.values()), dropped_by_reason=accounts.dropped_by_reason,
        per_source=accounts.per_source(kept_by_source, [source_name(s, i) for i, s in enumerate(cfg.data.sources)]),
        train_hash=digest_hash(kept.digests.filter(pc.invert(in_eval))),
        eval_hash=digest_hash(kept.digests.filter(in_eval)),
        config={"data": cfg.data.model_dump(mode="json"), "curate": cfg.curate.model_dump(mode="json")},
        repeated_user_ids=accounts.repeated_user_ids,
    )
