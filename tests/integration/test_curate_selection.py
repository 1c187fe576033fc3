"""Per-source caps and weights, and the per-filter seconds of the report, through `raylora curate` (issue 12).

    PYTHONPATH=$PWD python -m pytest tests/integration/test_curate_selection.py -q
"""

import pyarrow.parquet as pq
import yaml

from pipelines.artifacts import DatasetManifest
from pipelines.cli import main
from pipelines.config import validate_config


def _head(path, lines, tmp_path):
    head = tmp_path / f"head-{path.name}"
    head.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:lines]) + b"\n")
    return str(head)


def test_source_cap_then_weights_through_the_cli(ray_local, demo_config_dict, sample_data, tmp_path, capsys):
    demo_config_dict["curate"]["near_dedup_threshold"] = None
    demo_config_dict["data"]["sources"] = [
        {"path": _head(sample_data["alpaca"], 200, tmp_path), "max_rows": 60, "weight": 1.0},
        {"path": _head(sample_data["openai"], 200, tmp_path), "weight": 2.0},
    ]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    assert main(["curate", str(config)]) == 0
    printed = capsys.readouterr().out

    cfg = validate_config(demo_config_dict)
    manifest = DatasetManifest.read(cfg.path("curated", "manifest.json"))
    alpaca, openai = manifest.per_source["head-alpaca"], manifest.per_source["head-openai"]
    assert alpaca["kept"] == 60 and openai["kept"] == 120  # the cap, then a 1:2 mix of what is left
    assert alpaca["read"] == alpaca["kept"] + alpaca["dropped"] and openai["read"] == openai["kept"] + openai["dropped"]
    dropped = pq.read_table(manifest.dropped_paths).to_pylist()
    capped = {row["source"] for row in dropped if row["reason"] == "over_source_cap"}
    weighted = {row["source"] for row in dropped if row["reason"] == "over_source_weight"}
    assert capped == {"head-alpaca"} and weighted == {"head-openai"}
    assert manifest.dropped_by_reason["over_source_cap"] == sum(r["reason"] == "over_source_cap" for r in dropped)

    # the same config picks the same rows, curated again
    kept = sorted(pq.read_table(manifest.train_paths + manifest.eval_paths).column("id").to_pylist())
    assert main(["curate", str(config), "--force"]) == 0
    again = DatasetManifest.read(cfg.path("curated", "manifest.json"))
    assert sorted(pq.read_table(again.train_paths + again.eval_paths).column("id").to_pylist()) == kept

    # the report times each filter of the chain
    for name in ("turn_order", "placeholder_text", "answer_adequacy", "answer_relatedness"):
        assert any(line.split()[:1] == [name] for line in printed.splitlines()), name
