"""Curation benchmark: quality on the labelled sample data, throughput and memory at scale.

    raylora bench curate configs/demo.yaml                       # quality, then 50k, 200k and 1M rows
    raylora bench curate configs/demo.yaml --sizes 50000         # a quick run: one small point

1. Quality (pipelines/bench/curate_quality.py): the planted sample data and the hand-labelled realistic set,
   per kind, rows dropped for their own reason (recall) and clean rows kept, dev and heldout apart; and
   each filter's ms per row.
2. Throughput: a generated dataset (three formats, ~10% defects) curated on Ray Data and by one plain
   single-process Python loop, side by side in one run. The loop runs the very same per-row functions
   on the same batches (readers, the filter chain with its batched tokenizer, rensa MinHash, the
   integer-key dedup, the split), so the ratio compares the engines, not the primitives. Rows/s of
   each, the ratio, and the seconds of each phase (read+filter, dedup, select, account, write).
3. Memory: peak RSS of the driver plus every Ray process it started (raylet, GCS, workers), sampled
   while Ray curates each size (flat means streaming). The loop runs in a process of its own, so its
   memory never counts against Ray's.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.runtime_env import ensure_ray
from pipelines.bench.curate_quality import run_quality
from pipelines.config import RayloraConfig
from pipelines.curate.chain import chain_spec, filter_batch
from pipelines.curate.dedup import dedup_spec, find_duplicates, keeper_order, shingles
from pipelines.curate.kept_rows import key_matrix
from pipelines.curate.phase_rows import DROPPED_SCHEMA
from pipelines.curate.readers import chunk_items, plan_chunks, read_chunk_batch
from pipelines.curate.reasons import KEPT
from pipelines.curate.split import ROW_DIGEST, SPLIT_KEY, digest_hash, eval_cutoff, is_eval, output_tables
from pipelines.curate.stage import PHASES, curate
from pipelines.demo import sample_data

FORMATS = sample_data.FORMATS
DEFECT_KINDS = sample_data.DEFECT_KINDS


# --- 2. generated data at scale ---------------------------------------------------------------------

_WORDS = ["river", "stone", "cloud", "market", "lantern", "harbor", "meadow", "copper", "window", "garden",
          "pencil", "orchard", "compass", "bridge", "forest", "signal", "letter", "kettle", "ladder", "mirror"]


def _clean_turns(rng: random.Random, i: int) -> list[tuple[str, str]]:
    kind = i % 4
    if kind == 0:
        a, b = rng.randrange(10 ** 6), rng.randrange(10 ** 6)
        return [("user", f"What is {a} + {b}?"), ("assistant", str(a + b))]
    if kind == 1:
        digits = [str(rng.randrange(1000)) for _ in range(4)]
        return [("user", f"Sort {' '.join(digits)}."), ("assistant", " ".join(sorted(digits, key=int)))]
    if kind == 2:
        picked = rng.sample(_WORDS, 4)
        return [("user", f"Reverse the words {' '.join(picked)} please."), ("assistant", " ".join(picked[::-1]))]
    n = rng.randrange(10 ** 6)
    return [("system", "You are a precise assistant. Answer with the result only."),
            ("user", f"What comes after {n}?"), ("assistant", str(n + 1)),
            ("user", f"And what comes before {n}?"), ("assistant", str(n - 1))]


def make_bench_data(out_dir: str | Path, rows: int, seed: int = 0, defect_every: int = 10) -> list[Path]:
    """``rows`` lines over three format files: unique synthetic tasks plus the sample data's planted defects.
    Written once per (rows, seed, defect_every): a later run reuses the files."""
    out = Path(out_dir)
    paths = [out / f"{fmt}.jsonl" for fmt in FORMATS]
    done = out / "complete.json"
    recipe = {"rows": rows, "seed": seed, "defect_every": defect_every}
    if done.is_file() and json.loads(done.read_text()) == recipe and all(p.is_file() for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    planted_dir = out / "planted"
    sample_data.generate(planted_dir, seed=seed, n_clean=300, n_eval=50)
    planted = {fmt: [line for line in (planted_dir / f"{fmt}.jsonl").read_bytes().split(b"\n")[300 // 3:]
                     if line.strip()] for fmt in FORMATS}
    rng = random.Random(f"bench-{seed}")
    handles = [path.open("wb") for path in paths]
    defects_written = Counter[str]()
    try:
        for i in range(rows):
            fmt_index = i % 3
            fmt = FORMATS[fmt_index]
            if i % defect_every == defect_every - 1:
                line = planted[fmt][defects_written[fmt] % len(planted[fmt])]
                defects_written[fmt] += 1
                line = line.replace(b'"id": "', f'"id": "b{i}-'.encode(), 1)
            else:
                turns = _clean_turns(rng, i // 3)
                if fmt != "openai":
                    turns = [t for t in turns if t[0] != "system"][:2]
                line = json.dumps(sample_data.as_format(fmt, f"row-{i:08d}", turns)).encode()
            handles[fmt_index].write(line + b"\n")
    finally:
        for handle in handles:
            handle.close()
    done.write_text(json.dumps(recipe))
    return paths


def bench_config(base: RayloraConfig, paths: list[Path], eval_path: Path, workdir: Path) -> RayloraConfig:
    raw = base.model_dump()
    raw["workdir"] = str(workdir)
    raw["data"]["sources"] = [{"path": str(p), "format": fmt} for p, fmt in zip(paths, FORMATS, strict=True)]
    raw["data"]["eval_sets"] = [str(eval_path)]
    return RayloraConfig.model_validate(raw)


def plain_loop_curate(raw_cfg: dict) -> dict[str, Any]:
    """The whole curation as one single-process loop over the same functions: the same read chunks and
    batches through ``filter_batch`` (readers, filter chain, batched tokenizer, rensa MinHash, split keys and
    digests), ``find_duplicates`` over the same integer keys, the same split, dropped rows and hashes.

    The yardstick for the Ray Data pipeline: what a careful script would do on one core. Takes the config
    as plain data (it runs in a process of its own); returns its counts, hashes and seconds per phase.
    """
    cfg = RayloraConfig.model_validate(raw_cfg)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    spec, dedup = chain_spec(cfg), dedup_spec(cfg.curate)
    tables = [filter_batch(table, spec, dedup, cfg.seed) for item in chunk_items(plan_chunks(cfg.data.sources))
              for table in read_chunk_batch({"chunk": [item["chunk"]]})]
    rows = pa.concat_tables(tables)
    seconds["read+filter"], start = time.perf_counter() - start, time.perf_counter()

    kept = rows.filter(pc.equal(rows.column("reason"), KEPT))
    dropped = rows.filter(pc.not_equal(rows.column("reason"), KEPT)).select(DROPPED_SCHEMA.names)
    if dedup is not None:
        order = keeper_order(kept.column("user_id"), kept.column("id"))
        keys = key_matrix(kept.column("dedup_keys"))[order]
        kept = kept.drop_columns(["dedup_keys"]).take(pa.array(order))
        messages = kept.column("messages")
        found = find_duplicates(keys, dedup, lambda positions: {
            p: set(shingles(json.loads(messages[p].as_py()), dedup.shingle_words)) for p in positions.tolist()})
        duplicates = kept.take(pa.array(found.rows, pa.int64()))
        keepers = kept.column("id").take(pa.array(found.keepers, pa.int64())).to_pylist()
        dropped = pa.concat_tables([dropped, pa.table({
            "id": duplicates.column("id"), "user_id": duplicates.column("user_id"),
            "source": duplicates.column("source"), "reason": pa.array(found.reasons(), pa.string()),
            "detail": pa.array([f"duplicate of {keeper}" for keeper in keepers], pa.string())}, schema=DROPPED_SCHEMA)])
        mask = np.ones(kept.num_rows, dtype=bool)
        mask[found.rows] = False
        kept = kept.filter(pa.array(mask))
    seconds["dedup"], seconds["select"], start = time.perf_counter() - start, 0.0, time.perf_counter()

    out = cfg.path("plain_loop")
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(dropped.cast(DROPPED_SCHEMA), out / "dropped.parquet")
    counts = dropped.group_by("reason").aggregate([([], "count_all")])
    ids, keys = kept.column("id").combine_chunks(), kept.column(SPLIT_KEY).to_numpy()
    seconds["account"], start = time.perf_counter() - start, time.perf_counter()

    num_eval = cfg.data.eval_size if cfg.data.eval_size is not None else round(kept.num_rows * cfg.data.eval_fraction)
    num_eval = min(num_eval, kept.num_rows - 1)
    cutoff = eval_cutoff(keys, ids, num_eval)
    for split, part in zip(("train", "eval"), output_tables(kept, cfg.seed, cutoff), strict=True):
        pq.write_table(part, out / f"{split}.parquet")
    in_eval = pa.array(is_eval(keys, ids, cutoff))
    digests = kept.column(ROW_DIGEST).combine_chunks()
    hashes = {"train": digest_hash(digests.filter(pc.invert(in_eval))), "eval": digest_hash(digests.filter(in_eval))}
    seconds["write"] = time.perf_counter() - start
    return {"read": rows.num_rows, "kept": kept.num_rows, "dropped": dropped.num_rows, "hashes": hashes,
            "dropped_by_reason": {reason: int(n) for reason, n in zip(
                counts.column("reason").to_pylist(), counts.column("count_all").to_pylist(), strict=True)},
            "seconds": seconds}


def run_plain_loop(cfg: RayloraConfig) -> dict[str, Any]:
    """``plain_loop_curate`` in a fresh process, timed there (its imports and tokenizer load included)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(plain_loop_curate, cfg.model_dump(mode="json")).result()


# --- 3. memory ---------------------------------------------------------------------------------------

def _tree_rss() -> int:
    """RSS of this process and every process it started (Ray's raylet, GCS, object store, workers)."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Samples the process tree's RSS every 0.2 s; yields a dict that holds ``peak`` and ``idle`` after."""
    result = {"idle": _tree_rss(), "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], _tree_rss())
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def format_phases(seconds: dict[str, float]) -> str:
    return " ".join(f"{phase} {seconds.get(phase, 0.0):.1f}" for phase in PHASES)


def run_bench(cfg: RayloraConfig, sizes: tuple[int, ...] = (50_000, 200_000, 1_000_000)) -> dict[str, Any]:
    """Every curation benchmark, printed as it goes; returns the numbers."""
    ensure_ray(cfg)
    root = cfg.path("bench", "curate")
    results: dict[str, Any] = {}

    data = sample_data.generate(root / "sample", seed=cfg.seed)
    quality_cfg = bench_config(cfg, [data[f] for f in FORMATS], data["eval"], root / "quality")
    # curating the sample first also starts Ray's workers: every size below finds them warm
    results["quality"] = run_quality(cfg, root, quality_cfg, data)

    print("== curation throughput and memory (Ray Data vs one plain Python loop, the same functions)")
    results["scale"] = []
    for rows in sizes:
        paths = make_bench_data(root / f"data-{rows}", rows, seed=cfg.seed)
        scale_cfg = bench_config(cfg, paths, data["eval"], root / f"run-{rows}")
        ray_phases: dict[str, float] = {}
        with peak_rss() as memory:
            start = time.perf_counter()
            manifest = curate(scale_cfg, quiet=True, phase_seconds=ray_phases, reuse=False)
            ray_s = time.perf_counter() - start
        loop = run_plain_loop(scale_cfg)
        loop_s = sum(loop["seconds"].values())
        same = (manifest.num_kept, manifest.train_hash, manifest.eval_hash) == (
            loop["kept"], loop["hashes"]["train"], loop["hashes"]["eval"])
        entry = {"rows": rows, "ray_s": ray_s, "ray_rows_per_s": rows / ray_s, "loop_s": loop_s,
                 "loop_rows_per_s": rows / loop_s, "speedup": loop_s / ray_s, "ray_kept": manifest.num_kept,
                 "loop_kept": loop["kept"], "same_output": same, "ray_phases": ray_phases,
                 "loop_phases": loop["seconds"], "peak_rss_gib": memory["peak"] / 2 ** 30,
                 "idle_rss_gib": memory["idle"] / 2 ** 30}
        results["scale"].append(entry)
        print(f"  {rows:>8} rows: ray {entry['ray_rows_per_s']:>7.0f} rows/s ({ray_s:.1f} s), plain loop "
              f"{entry['loop_rows_per_s']:>7.0f} rows/s ({loop_s:.1f} s), ratio {entry['speedup']:.2f}x; "
              f"kept ray {manifest.num_kept} / loop {loop['kept']} ({'same rows' if same else 'DIFFERENT rows'}); "
              f"peak RSS {entry['peak_rss_gib']:.2f} GiB (idle {entry['idle_rss_gib']:.2f} GiB)")
        print(f"  {'':>8}  seconds per phase: ray  {format_phases(ray_phases)}")
        print(f"  {'':>8}                     loop {format_phases(loop['seconds'])}")
    return results
