"""Curation benchmark: quality on the labelled sample data, throughput and memory at scale.

    raylora bench curate configs/demo.yaml      # quality table, then 50k and 200k rows (about 15 min on 2 cores)

1. Quality: curate the sample data (planted defects, labels.jsonl) and print, per kind, how many rows
   were dropped (recall) and how many clean rows were kept; duplicate groups must keep exactly one row.
2. Throughput: a generated dataset (default 200k rows, three formats, ~10% defects) curated on Ray Data
   and by the same filters and dedup as one plain single-process Python loop (datasketch MinHash + LSH),
   side by side in one run; rows/s of each and the ratio.
3. Memory: peak RSS of the driver plus every Ray process it started, sampled while curating 50k and
   200k rows (flat means streaming).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.runtime_env import ensure_ray
from pipelines.config import RayloraConfig
from pipelines.curate.dedup import exact_key, jaccard, lsh_bands, shingles
from pipelines.curate.filters import first_failure, length_model, token_limit
from pipelines.curate.formats import MalformedRecord, canonical_row, malformed_row, parse_line
from pipelines.curate.readers import source_name
from pipelines.curate.reasons import EXACT_DUPLICATE, KEPT, NEAR_DUPLICATE
from pipelines.curate.split import OUTPUT_SCHEMA
from pipelines.curate.stage import DROPPED_SCHEMA, curate, filter_chain, load_eval_index
from pipelines.demo import sample_data

FORMATS = sample_data.FORMATS
DEFECT_KINDS = sample_data.DEFECT_KINDS


# --- 1. quality on the labelled sample data --------------------------------------------------------

def quality_table(manifest_dropped: list[str], labels_path: str | Path) -> tuple[list[dict], dict[str, Any]]:
    """Per planted kind: rows, dropped, recall; plus clean rows kept and duplicate groups with one survivor.
    A label names a row by its own id, or by ``<file stem>:<line>`` (its key) when the line has none."""
    dropped = {}
    for path in manifest_dropped:
        for row in pq.read_table(path, columns=["id", "user_id", "reason"]).to_pylist():
            dropped[row["user_id"] or row["id"]] = row["reason"]
    labels = sample_data.read_labels(labels_path)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for label in labels:
        by_kind[label["kind"]].append(label)
    table = []
    for kind in (sample_data.CLEAN, *DEFECT_KINDS):
        rows = by_kind.get(kind, [])
        gone = sum(label["id"] in dropped for label in rows)
        reasons = Counter(dropped[label["id"]] for label in rows if label["id"] in dropped)
        rate = (len(rows) - gone) / len(rows) if kind == sample_data.CLEAN else gone / max(len(rows), 1)
        table.append({"kind": kind, "rows": len(rows), "dropped": gone, "kept": len(rows) - gone, "rate": rate,
                      "reasons": dict(reasons)})
    groups: dict[str, list[str]] = defaultdict(list)
    for label in labels:
        if label["group"]:
            groups[label["group"]].extend([label["id"]])
    survivors = {group: [i for i in [group, *members] if i not in dropped] for group, members in groups.items()}
    summary = {"duplicate_groups": len(groups),
               "groups_keeping_exactly_one": sum(len(s) == 1 for s in survivors.values()),
               "groups_keeping_the_original": sum(s == [g] for g, s in survivors.items())}
    return table, summary


def format_quality(table: list[dict], summary: dict[str, Any]) -> str:
    lines = [f"  {'kind':<16} {'rows':>5} {'dropped':>8} {'kept':>5}  {'rate':>6}  reasons"]
    for row in table:
        label = "kept" if row["kind"] == sample_data.CLEAN else "recall"
        lines.append(f"  {row['kind']:<16} {row['rows']:>5} {row['dropped']:>8} {row['kept']:>5}  "
                     f"{row['rate']:>6.3f}  {label}; {row['reasons']}")
    lines.append(f"  duplicate groups: {summary['duplicate_groups']}, keeping exactly one row: "
                 f"{summary['groups_keeping_exactly_one']}, keeping the original: "
                 f"{summary['groups_keeping_the_original']}")
    return "\n".join(lines)


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
    """``rows`` lines over three format files: unique synthetic tasks plus the sample data's planted defects."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    planted_dir = out / "planted"
    sample_data.generate(planted_dir, seed=seed, n_clean=300, n_eval=50)
    planted = {fmt: [line for line in (planted_dir / f"{fmt}.jsonl").read_bytes().split(b"\n")[300 // 3:]
                     if line.strip()] for fmt in FORMATS}
    rng = random.Random(f"bench-{seed}")
    paths = [out / f"{fmt}.jsonl" for fmt in FORMATS]
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
    return paths


def bench_config(base: RayloraConfig, paths: list[Path], eval_path: Path, workdir: Path) -> RayloraConfig:
    raw = base.model_dump()
    raw["workdir"] = str(workdir)
    raw["data"]["sources"] = [{"path": str(p), "format": fmt} for p, fmt in zip(paths, FORMATS, strict=True)]
    raw["data"]["eval_sets"] = [str(eval_path)]
    return RayloraConfig.model_validate(raw)


def plain_loop_curate(cfg: RayloraConfig) -> dict[str, int]:
    """The same reading, filters, decontamination and dedup as one single-process loop (datasketch LSH).

    The yardstick for the Ray Data pipeline: what a careful script would do on one core.
    """
    from datasketch import MinHash

    settings = cfg.curate
    chain = filter_chain(settings, length_model(cfg), token_limit(cfg), load_eval_index(cfg))
    kept: dict[str, dict] = {}
    dropped: list[dict] = []
    for index, source in enumerate(cfg.data.sources):
        name = source_name(source, index)
        stem = Path(source.path).stem
        with open(source.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    row = canonical_row(parse_line(raw), name, source.format, dict(source.field_map),
                                        f"{stem}:{number}")
                except MalformedRecord as err:
                    row = malformed_row(f"{stem}:{number}", name, str(err))
                if row["reason"] == KEPT:
                    messages = json.loads(row["messages"])
                    row["reason"] = first_failure(messages, chain)
                if row["reason"] != KEPT:
                    dropped.append(row)
                else:
                    row["parsed"] = messages
                    kept[row["id"]] = row
    # exact dedup: the first row by (user id, key) per normalised text, as the Ray pipeline keeps
    def first_kept(row_id: str) -> tuple[str, str]:
        return kept[row_id]["user_id"] or "", row_id

    smallest: dict[int, str] = {}
    for row_id in sorted(kept, key=first_kept):
        key = exact_key(kept[row_id]["parsed"])
        if key in smallest:
            dropped.append({**kept.pop(row_id), "reason": EXACT_DUPLICATE})
        else:
            smallest[key] = row_id
    # near dedup: datasketch MinHash, banded as in the Ray pipeline; in keeping order, the first row seen in
    # a bucket is its keeper, and a row is a duplicate when it verifies against one of its buckets' keepers
    bands, rows_per_band = lsh_bands(settings.near_dedup_threshold, settings.minhash_num_perm)
    template = MinHash(num_perm=settings.minhash_num_perm)  # permutations made once, as a careful script would
    first_in_bucket: dict[bytes, str] = {}
    row_shingles: dict[str, list[str]] = {}
    for row_id in sorted(kept, key=first_kept):
        row_shingles[row_id] = shingles(kept[row_id]["parsed"], settings.shingle_words)
        minhash = MinHash(num_perm=settings.minhash_num_perm, permutations=template.permutations,
                          scheme=template.scheme)
        minhash.update_batch([s.encode() for s in row_shingles[row_id]])
        keepers = set()
        for band in range(bands):
            key = bytes([band]) + minhash.hashvalues[band * rows_per_band:(band + 1) * rows_per_band].tobytes()
            keepers.add(first_in_bucket.setdefault(key, row_id))
        keepers.discard(row_id)
        if any(jaccard(row_shingles[row_id], row_shingles[k]) >= settings.near_dedup_threshold
               for k in sorted(keepers)):
            dropped.append({**kept.pop(row_id), "reason": NEAR_DUPLICATE})
    out = cfg.path("plain_loop")
    out.mkdir(parents=True, exist_ok=True)
    kept_rows = [{"id": r["id"], "user_id": r["user_id"], "source": r["source"], "messages": r["parsed"]}
                 for r in kept.values()]
    pq.write_table(pa.Table.from_pylist(kept_rows, schema=OUTPUT_SCHEMA), out / "kept.parquet")
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in DROPPED_SCHEMA.names} for r in dropped],
                                        schema=DROPPED_SCHEMA), out / "dropped.parquet")
    return {"kept": len(kept_rows), "dropped": len(dropped)}


# --- 3. memory ---------------------------------------------------------------------------------------

def _tree_rss() -> int:
    """RSS of this process and every process it started (Ray's raylet, object store, workers)."""
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


def run_bench(cfg: RayloraConfig, sizes: tuple[int, ...] = (50_000, 200_000)) -> dict[str, Any]:
    """Every curation benchmark, printed as it goes; returns the numbers."""
    ensure_ray(cfg)
    root = cfg.path("bench", "curate")
    results: dict[str, Any] = {}

    data = sample_data.generate(root / "sample", seed=cfg.seed)
    quality_cfg = bench_config(cfg, [data[f] for f in FORMATS], data["eval"], root / "quality")
    manifest = curate(quality_cfg, quiet=True)
    table, summary = quality_table(manifest.dropped_paths, data["labels"])
    print("== curation quality on the labelled sample data")
    print(format_quality(table, summary))
    results["quality"] = {"table": table, **summary}

    print("== curation throughput and memory (Ray Data vs one plain Python loop, same filters and dedup)")
    results["scale"] = []
    for rows in sizes:
        paths = make_bench_data(root / f"data-{rows}", rows, seed=cfg.seed)
        scale_cfg = bench_config(cfg, paths, data["eval"], root / f"run-{rows}")
        with peak_rss() as memory:
            start = time.perf_counter()
            manifest = curate(scale_cfg, quiet=True)
            ray_s = time.perf_counter() - start
        start = time.perf_counter()
        loop = plain_loop_curate(scale_cfg)
        loop_s = time.perf_counter() - start
        entry = {"rows": rows, "ray_s": ray_s, "ray_rows_per_s": rows / ray_s, "loop_s": loop_s,
                 "loop_rows_per_s": rows / loop_s, "speedup": loop_s / ray_s,
                 "ray_kept": manifest.num_kept, "loop_kept": loop["kept"],
                 "peak_rss_gib": memory["peak"] / 2 ** 30, "idle_rss_gib": memory["idle"] / 2 ** 30}
        results["scale"].append(entry)
        print(f"  {rows:>7} rows: ray {entry['ray_rows_per_s']:>7.0f} rows/s ({ray_s:.1f} s), plain loop "
              f"{entry['loop_rows_per_s']:>7.0f} rows/s ({loop_s:.1f} s), ratio {entry['speedup']:.2f}x; "
              f"kept ray {manifest.num_kept} / loop {loop['kept']}; peak RSS {entry['peak_rss_gib']:.2f} GiB "
              f"(idle {entry['idle_rss_gib']:.2f} GiB)")
    return results
