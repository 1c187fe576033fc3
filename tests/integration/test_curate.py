"""The curation stage end to end on Ray Data, scored against the planted sample data's labels.

    PYTHONPATH=$PWD python -m pytest tests/integration/test_curate.py -q
"""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.artifacts import DatasetManifest
from pipelines.bench.curate_quality import quality_table
from pipelines.cli import EXIT_USAGE, main
from pipelines.config import validate_config
from pipelines.curate import OUTPUT_SCHEMA, curate
from pipelines.errors import StageError


def _write_config(raw, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_sample_data_is_curated_to_the_targets(curated_by_stage, sample_data):
    report = curated_by_stage.report
    cfg = validate_config(curated_by_stage.config)
    manifest = DatasetManifest.read(cfg.path("curated", "manifest.json"))
    assert "malformed" in report and "example" in report

    # every planted kind dropped, clean rows kept, one row per duplicate group
    table, summary = quality_table(manifest.dropped_paths, sample_data["labels"])
    rates = {row["kind"]: row["rate"] for row in table}
    assert rates.pop("clean") >= 0.97
    assert all(rate >= 0.95 for rate in rates.values()), rates
    assert summary["groups_keeping_exactly_one"] == summary["duplicate_groups"] > 0
    assert summary["groups_keeping_the_original"] == summary["duplicate_groups"]

    # read = kept + dropped per source, and read is every non-blank line of the file
    for fmt in ("alpaca", "sharegpt", "openai"):
        lines = [line for line in sample_data[fmt].read_bytes().split(b"\n") if line.strip()]
        counts = manifest.per_source[fmt]
        assert counts["read"] == len(lines) == counts["kept"] + counts["dropped"]
    assert manifest.num_read == manifest.num_kept + manifest.num_dropped
    assert sum(manifest.dropped_by_reason.values()) == manifest.num_dropped

    # malformed rows: never a crash, quarantined with the parse error under the labels' ids
    dropped = pq.read_table(manifest.dropped_paths).to_pylist()
    # a label names a row by its own id, or by its key <file stem>:<line> when the line has none (issue 11: the
    # `id` column is the key, the record's own id is `user_id`)
    malformed = {row["user_id"] or row["id"]: row["detail"] for row in dropped if row["reason"] == "malformed"}
    labelled = {label["id"] for label in map(json.loads, sample_data["labels"].read_text().splitlines())
                if label["kind"] == "malformed"}
    assert set(malformed) == labelled and all(malformed.values())

    # the contract the train stage reads: canonical schema, normalised roles, deterministic split sizes
    train = pq.read_table(manifest.train_paths)
    assert train.schema.equals(OUTPUT_SCHEMA)
    assert {m["role"] for row in train.column("messages").to_pylist() for m in row} <= {"system", "user", "assistant"}
    assert manifest.num_eval == round(manifest.num_kept * cfg.data.eval_fraction)
    assert pq.read_table(manifest.eval_paths).num_rows == manifest.num_eval
    kept_ids = train.column("id").to_pylist() + pq.read_table(manifest.eval_paths).column("id").to_pylist()
    assert len(set(kept_ids)) == len(kept_ids) == manifest.num_kept
    assert manifest.config["curate"]["near_dedup_threshold"] == 0.7
    assert len(manifest.train_hash) == len(manifest.eval_hash) == 64 and manifest.train_hash != manifest.eval_hash


def test_everything_dropped_fails_with_the_reason_table(ray_local, demo_config_dict, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "instruction": "What is 3 + 4?", "output": ""}\n{broken\n')
    demo_config_dict["data"]["sources"] = [{"path": str(bad)}]
    with pytest.raises(StageError, match="every row was dropped") as failure:
        curate(validate_config(demo_config_dict), quiet=True)
    assert "empty_answer" in str(failure.value) and "malformed" in str(failure.value)


def test_a_source_that_does_not_exist_is_a_config_error_naming_it(ray_local, demo_config_dict, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "data.jsonl"
    demo_config_dict["data"]["sources"].append({"path": str(missing)})
    assert main(["curate", _write_config(demo_config_dict, tmp_path)]) == EXIT_USAGE
    assert f"data.sources[3].path={missing} does not exist" in capsys.readouterr().err


def _head(path, lines, tmp_path):
    """The first ``lines`` lines of a sample file: selection tests need rows, not the whole set."""
    head = tmp_path / f"head-{path.name}"
    head.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:lines]) + b"\n")
    return str(head)


def test_top_k_keeps_the_best_rows(ray_local, demo_config_dict, sample_data, tmp_path):
    demo_config_dict["curate"].update({"quality_top_k": 50, "near_dedup_threshold": None})
    demo_config_dict["data"]["eval_size"] = 5
    # openai rows: about one in five is multi-turn
    demo_config_dict["data"]["sources"] = [{"path": _head(sample_data["openai"], 300, tmp_path)}]
    manifest = curate(validate_config(demo_config_dict), quiet=True)
    assert (manifest.num_train, manifest.num_eval) == (45, 5)
    assert manifest.dropped_by_reason["below_top_k"] > 0
    kept = pq.read_table(manifest.train_paths + manifest.eval_paths).column("messages").to_pylist()
    assert Counter(len(m) > 2 for m in kept)[True] == 50  # multi-turn rows score highest


def test_diversity_selection_with_the_bundled_embedding_model(ray_local, demo_config_dict, sample_data, tmp_path):
    import random

    import numpy as np

    from pipelines.curate.embeddings import embed

    demo_config_dict["curate"].update({"diversity_select": 30, "near_dedup_threshold": None})
    demo_config_dict["data"]["sources"] = [{"path": _head(sample_data["alpaca"], 80, tmp_path)}]
    manifest = curate(validate_config(demo_config_dict), quiet=True)
    assert manifest.num_kept == 30
    assert manifest.dropped_by_reason["not_diverse"] == manifest.num_read - 30 - sum(
        n for reason, n in manifest.dropped_by_reason.items() if reason != "not_diverse")

    # the chosen rows are farther apart than random picks of the same size from the same candidates
    def text(messages):
        return " ".join(m["content"] for m in messages)

    chosen = [text(m) for m in pq.read_table(manifest.train_paths + manifest.eval_paths).column("messages").to_pylist()]
    not_diverse = {row["user_id"] for row in pq.read_table(manifest.dropped_paths).to_pylist()
                   if row["reason"] == "not_diverse"}
    rows = []
    for line in sample_data["alpaca"].read_bytes().split(b"\n")[:80]:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the planted malformed lines: curation dropped them before selection
            continue
    candidates = chosen + [f"{r['instruction']} {r['output']}" for r in rows if r.get("id") in not_diverse]

    def min_distance(texts):
        vectors = embed(texts)
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -1.0)
        return 1.0 - similarity.max()

    rng = random.Random(0)
    random_picks = [min_distance(rng.sample(candidates, len(chosen))) for _ in range(5)]
    assert min_distance(chosen) > max(random_picks)
