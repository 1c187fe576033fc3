"""Curation quality: the planted sample data and the hand-labelled realistic set, each row scored as caught only
when it is dropped for its own reason; and what each filter costs, in ms per row.

    raylora bench curate configs/demo.yaml       # prints these tables first (pipelines/bench/curate.py)
    python -m pipelines.bench.curate_quality configs/demo.yaml --split dev      # the labelled set only, in-process

1. Sample data: curate the planted sample (labels.jsonl) on Ray; per kind, rows, dropped for its own reason
   (the kind is the reason), recall, and clean rows kept; duplicate groups must keep exactly one row.
2. Labelled set (tests/data/curation_quality/labelled.jsonl, written by hand by someone who had not read the
   filters): curated on Ray with every language it holds allowed, scored per split (dev: what the filters
   were tuned on; heldout: never looked at while tuning) against ``KIND_REASONS``, with the aims:
   junk recall >= 0.95, refusal recall >= 0.95, clean keep >= 0.99, every short-but-right answer kept.
3. Cost: each filter of the default chain run in-process over both sets, as the chain runs them (a filter
   sees the rows the earlier ones kept); seconds and ms per row read.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.config import RayloraConfig
from pipelines.curate.chain import filter_chain, load_eval_index
from pipelines.curate.filters import Messages, first_failures
from pipelines.curate.formats import MalformedRecord, canonical_row, parse_line
from pipelines.curate.reasons import (
    CLASSIFIED_REFUSAL,
    ECHOED_PROMPT,
    INADEQUATE_ANSWER,
    KEPT,
    NON_WORDS,
    PLACEHOLDER,
    REFUSAL,
    SHORT_ANSWER,
    UNRELATED_ANSWER,
)
from pipelines.curate.stage import curate
from pipelines.curate.token_count import length_model, token_limit
from pipelines.demo import sample_data

LABELLED_SET = Path(__file__).resolve().parents[2] / "tests" / "data" / "curation_quality" / "labelled.jsonl"
KEEP_KINDS = ("clean", "short_right")  # scored by the rate kept
# The reasons that are a labelled kind's own: a row counts as caught only when dropped for one of them. A
# one-word or filler answer to an open instruction is the adequacy check's (or, on a long prompt, the length
# ratio's); filler that is longer is the relatedness check's; refusals and boilerplate are the phrase list's
# or the classifier's.
KIND_REASONS: dict[str, frozenset[str]] = {
    "oneword_open": frozenset({INADEQUATE_ANSWER, SHORT_ANSWER}),
    "filler": frozenset({INADEQUATE_ANSWER, SHORT_ANSWER, UNRELATED_ANSWER}),
    "echo": frozenset({ECHOED_PROMPT}),
    "placeholder": frozenset({PLACEHOLDER}),
    "keyboard_mash": frozenset({NON_WORDS}),
    "refusal": frozenset({REFUSAL, CLASSIFIED_REFUSAL}),
    "boilerplate": frozenset({REFUSAL, CLASSIFIED_REFUSAL}),
}
JUNK_KINDS = ("oneword_open", "filler", "echo", "placeholder", "keyboard_mash")
REFUSAL_KINDS = ("refusal", "boilerplate")
AIMS = {"junk_recall": 0.95, "refusal_recall": 0.95, "clean_keep": 0.99, "short_right_keep": 1.0}


# --- 1. the planted sample data -----------------------------------------------------------------------

def dropped_reasons(dropped_paths: list[str]) -> dict[str, str]:
    """A dropped row's reason by the row's own id, or by its key when it has none."""
    dropped = {}
    for path in dropped_paths:
        for row in pq.read_table(path, columns=["id", "user_id", "reason"]).to_pylist():
            dropped[row["user_id"] or row["id"]] = row["reason"]
    return dropped


def quality_table(manifest_dropped: list[str], labels_path: str | Path) -> tuple[list[dict], dict[str, Any]]:
    """Per planted kind: rows, dropped for its own reason (the kind is the reason it should get), recall;
    clean rows kept; duplicate groups with one survivor. A row another check dropped is not counted as caught,
    so a broken filter does not pass because a different one happened to catch its rows.
    A label names a row by its own id, or by ``<file stem>:<line>`` (its key) when the line has none."""
    dropped = dropped_reasons(manifest_dropped)
    labels = sample_data.read_labels(labels_path)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for label in labels:
        by_kind[label["kind"]].append(label)
    table = []
    for kind in (sample_data.CLEAN, *sample_data.DEFECT_KINDS):
        rows = by_kind.get(kind, [])
        reasons = Counter(dropped[label["id"]] for label in rows if label["id"] in dropped)
        if kind == sample_data.CLEAN:
            gone = sum(reasons.values())
            table.append({"kind": kind, "rows": len(rows), "dropped": gone, "kept": len(rows) - gone,
                          "rate": (len(rows) - gone) / max(len(rows), 1), "reasons": dict(reasons)})
        else:
            caught = reasons[kind]
            table.append({"kind": kind, "rows": len(rows), "dropped": caught, "kept": len(rows) - sum(reasons.values()),
                          "rate": caught / max(len(rows), 1), "reasons": dict(reasons)})
    groups: dict[str, list[str]] = defaultdict(list)
    for label in labels:
        if label["group"]:
            groups[label["group"]].append(label["id"])
    survivors = {group: [i for i in [group, *members] if i not in dropped] for group, members in groups.items()}
    summary = {"duplicate_groups": len(groups),
               "groups_keeping_exactly_one": sum(len(s) == 1 for s in survivors.values()),
               "groups_keeping_the_original": sum(s == [g] for g, s in survivors.items())}
    return table, summary


def format_quality(table: list[dict], summary: dict[str, Any]) -> str:
    lines = [f"  {'kind':<16} {'rows':>5} {'own reason':>10} {'kept':>5}  {'rate':>6}  reasons"]
    for row in table:
        label = "kept" if row["kind"] == sample_data.CLEAN else "recall"
        lines.append(f"  {row['kind']:<16} {row['rows']:>5} {row['dropped']:>10} {row['kept']:>5}  "
                     f"{row['rate']:>6.3f}  {label}; {row['reasons']}")
    lines.append(f"  duplicate groups: {summary['duplicate_groups']}, keeping exactly one row: "
                 f"{summary['groups_keeping_exactly_one']}, keeping the original: "
                 f"{summary['groups_keeping_the_original']}")
    return "\n".join(lines)


# --- 2. the hand-labelled realistic set -----------------------------------------------------------------

def read_labelled(path: str | Path = LABELLED_SET, split: str | None = None) -> list[dict]:
    """The labelled rows (id, kind, split, language, messages), of one split when ``split`` is given."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [row for row in rows if split is None or row["split"] == split]


def labelled_table(rows: list[dict], reason_of: dict[str, str]) -> dict[str, Any]:
    """Per kind: rows, dropped for its own reason, kept, recall (clean and short_right: kept rate), the
    reasons given; and the aims' four figures. ``reason_of`` maps a row id to its reason (``KEPT`` if kept)."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(reason_of[row["id"]])
    kinds = {}
    for kind in (*KEEP_KINDS, *REFUSAL_KINDS, *JUNK_KINDS):
        reasons = by_kind.get(kind, [])
        kept = sum(reason == KEPT for reason in reasons)
        own = sum(reason in KIND_REASONS.get(kind, ()) for reason in reasons)
        kinds[kind] = {"rows": len(reasons), "own_reason": own, "kept": kept,
                       "rate": (kept if kind in KEEP_KINDS else own) / max(len(reasons), 1),
                       "reasons": dict(Counter(reason or "kept" for reason in reasons))}

    def recall(group: tuple[str, ...]) -> float:
        total = sum(kinds[k]["rows"] for k in group)
        return sum(kinds[k]["own_reason"] for k in group) / max(total, 1)

    figures = {"junk_recall": recall(JUNK_KINDS), "refusal_recall": recall(REFUSAL_KINDS),
               "clean_keep": kinds["clean"]["rate"], "short_right_keep": kinds["short_right"]["rate"]}
    return {"kinds": kinds, "figures": figures, "aims_met": all(figures[k] >= AIMS[k] for k in AIMS)}


def format_labelled(split: str, table: dict[str, Any]) -> str:
    lines = [f"  [{split}] {'kind':<14} {'rows':>5} {'own reason':>10} {'kept':>5}  {'rate':>6}  reasons"]
    for kind, row in table["kinds"].items():
        label = "kept" if kind in KEEP_KINDS else "recall"
        lines.append(f"  [{split}] {kind:<14} {row['rows']:>5} {row['own_reason']:>10} {row['kept']:>5}  "
                     f"{row['rate']:>6.3f}  {label}; {row['reasons']}")
    f = table["figures"]
    lines.append(f"  [{split}] aims: junk recall {f['junk_recall']:.3f} (>= 0.95), refusal recall "
                 f"{f['refusal_recall']:.3f} (>= 0.95), clean keep {f['clean_keep']:.3f} (>= 0.99), short-but-right "
                 f"kept {f['short_right_keep']:.3f} (all): {'met' if table['aims_met'] else 'NOT met'}")
    return "\n".join(lines)


def labelled_config(base: RayloraConfig, source: Path, languages: list[str], workdir: Path) -> RayloraConfig:
    """``base`` curating the labelled set alone: every language it holds allowed, no eval-set
    decontamination (its rows are not the sample tasks)."""
    raw = base.model_dump()
    raw["workdir"] = str(workdir)
    raw["data"]["sources"] = [{"path": str(source), "format": "openai"}]
    raw["data"]["eval_sets"] = []
    raw["curate"]["languages"] = languages
    # the rows are real answers of any length: the tiny demo model's context would drop most of them as
    # over_long, which is about the model, not about what the answers say
    raw["curate"]["max_tokens"] = 1_000_000
    return RayloraConfig.model_validate(raw)


def curate_labelled(cfg: RayloraConfig, root: Path, path: str | Path = LABELLED_SET) -> dict[str, str]:
    """Curate the labelled set on Ray; each row's reason by its id (``KEPT`` when kept)."""
    rows = read_labelled(path)
    source = root / "labelled.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps({"id": row["id"], "messages": row["messages"]}) + "\n" for row in rows))
    languages = sorted({row["language"] for row in rows})
    manifest = curate(labelled_config(cfg, source, languages, root / "run"), quiet=True)
    dropped = dropped_reasons(manifest.dropped_paths)
    return {row["id"]: dropped.get(row["id"], KEPT) for row in rows}


# --- 3. what each filter costs ----------------------------------------------------------------------------

def filter_costs(cfg: RayloraConfig, conversations: list[Messages | None]) -> dict[str, dict[str, float]]:
    """Each filter of ``cfg``'s chain over ``conversations`` as the chain runs it, in one process (models and
    tokenizer loaded first, so their one-off load is not counted): seconds and ms per row given."""
    from pipelines.curate import refusal
    from pipelines.curate.embeddings import embed
    from pipelines.curate.filters import identify_language

    chain = filter_chain(cfg.curate, length_model(cfg), token_limit(cfg), load_eval_index(cfg))
    # load the tokenizer and the models once, as a worker does before its first batch
    first_failures(conversations[:64], chain)
    identify_language("a sentence long enough for the language model to load")
    refusal.refusal_probabilities(["I'm sorry, but I can't help with that."])
    embed(["warm"])
    seconds: dict[str, float] = {}
    first_failures(conversations, chain, seconds)
    return {name: {"seconds": s, "ms_per_row": 1000 * s / max(len(conversations), 1)} for name, s in seconds.items()}


def sample_conversations(paths: dict[str, Path]) -> list[Messages | None]:
    """The sample data's rows as conversations (None where a row is malformed), as curation reads them."""
    conversations: list[Messages | None] = []
    for fmt in sample_data.FORMATS:
        for number, raw in enumerate(paths[fmt].read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = canonical_row(parse_line(raw), fmt, fmt, {}, f"{fmt}:{number}")
                conversations.append(json.loads(row["messages"]) if row["reason"] == KEPT else None)
            except MalformedRecord:
                conversations.append(None)
    return conversations


def format_costs(name: str, rows: int, costs: dict[str, dict[str, float]]) -> str:
    total = sum(c["seconds"] for c in costs.values())
    lines = [f"  {name} ({rows} rows): {1000 * total / max(rows, 1):.3f} ms/row in all"]
    lines += [f"    {filter_name:<20} {c['seconds']:>8.3f} s  {c['ms_per_row']:>8.3f} ms/row"
              for filter_name, c in costs.items()]
    return "\n".join(lines)


# --- the benchmark ------------------------------------------------------------------------------------------

def run_quality(cfg: RayloraConfig, root: Path, sample_cfg: RayloraConfig, sample: dict[str, Path]) -> dict[str, Any]:
    """Every quality table and the filter costs, printed as they come; returns the numbers. ``sample_cfg``
    curates the planted ``sample`` data (the benchmark's config for it)."""
    results: dict[str, Any] = {}
    manifest = curate(sample_cfg, quiet=True)
    table, summary = quality_table(manifest.dropped_paths, sample["labels"])
    print("== curation quality on the planted sample data (caught = dropped for its own reason)")
    print(format_quality(table, summary))
    results["sample"] = {"table": table, **summary}

    print(f"== curation quality on the hand-labelled set ({LABELLED_SET.name}; caught = dropped for its own reason)")
    reason_of = curate_labelled(cfg, root / "labelled")
    results["labelled"] = {}
    for split in ("dev", "heldout"):
        split_table = labelled_table(read_labelled(split=split), reason_of)
        print(format_labelled(split, split_table))
        results["labelled"][split] = split_table

    print("== filter costs (in one process, each filter over the rows the earlier ones kept)")
    results["costs"] = {}
    for name, run_cfg, conversations in (
            ("sample data", sample_cfg, sample_conversations(sample)),
            ("labelled set", labelled_config(cfg, root / "labelled" / "labelled.jsonl",
                                             sorted({r["language"] for r in read_labelled()}), root / "costs"),
             [row["messages"] for row in read_labelled()])):
        costs = filter_costs(run_cfg, conversations)
        print(format_costs(name, len(conversations), costs))
        results["costs"][name] = costs
    return results


def main(argv: list[str] | None = None) -> None:
    """Score one split of the labelled set in-process (no Ray): the quick loop for tuning on ``dev``."""
    from pipelines.config import load_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("--split", default="dev", choices=["dev", "heldout"])
    parser.add_argument("--show", action="store_true", help="print each row the filters get wrong")
    args = parser.parse_args(argv)
    if args.show and args.split != "dev":
        parser.error("--show prints rows, and the heldout rows are never looked at (tuning on them would make "
                     "them dev): use --split dev")
    rows = read_labelled(split=args.split)
    cfg = labelled_config(load_config(args.config), LABELLED_SET, sorted({r["language"] for r in read_labelled()}),
                          Path("."))
    chain = filter_chain(cfg.curate, length_model(cfg), token_limit(cfg), None)
    verdicts = first_failures([row["messages"] for row in rows], chain)
    reason_of = {row["id"]: verdict for row, verdict in zip(rows, verdicts, strict=True)}
    print(format_labelled(args.split, labelled_table(rows, reason_of)))
    if args.show:
        for row in rows:
            reason = reason_of[row["id"]]
            right = reason == KEPT if row["kind"] in KEEP_KINDS else reason in KIND_REASONS[row["kind"]]
            if not right:
                print(json.dumps({"id": row["id"], "kind": row["kind"], "got": reason or "kept",
                                  "messages": row["messages"]}, ensure_ascii=False)[:600])


if __name__ == "__main__":
    main()
