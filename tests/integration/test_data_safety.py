"""Issue 11 through the curate stage: data is never silently lost or wrong.

    .venv/bin/python -m pytest tests/integration/test_data_safety.py -q

Rows are told apart by a key of their own (source file and line), duplicates by their content; repeated user
ids are kept and reported; one bad record costs one malformed row; ``curate.output_dir`` stays a
subdirectory of the workdir, and a curation that fails leaves the last good output byte for byte.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.artifacts import DatasetManifest
from pipelines.cli import EXIT_OK, EXIT_USAGE, main
from pipelines.config import validate_config
from pipelines.curate import curate
from pipelines.errors import ConfigError, StageError
from pipelines.train.data import read_rows, stable_shard

TASKS = [("What is 10 + 1?", "11"), ("Sort 9 4 7.", "4 7 9"), ("What comes after 41?", "42"),
         ("Reverse the words lamp desk.", "desk lamp"), ("What is 25 + 17?", "42"), ("Sort 3 8 1.", "1 3 8")]
OTHER_TASKS = [("What is 61 + 5?", "66"), ("Sort 12 40 2.", "2 12 40"), ("What comes after 77?", "78"),
               ("Reverse the words cup tea.", "tea cup"), ("What is 31 + 9?", "40"), ("Sort 6 5 0.", "0 5 6")]
NO_ID_LINE = json.dumps({"instruction": "Name the capital of Kalo.", "output": "Ven"})


def _alpaca(row_id, task):
    return json.dumps({"id": row_id, "instruction": task[0], "output": task[1]})


def write_sources(folder: Path) -> list[dict]:
    """Two JSONL sources both numbered 0..5 with different tasks, the same id-less line twice in one and once
    in the other; a CSV with a byte-order mark and an unquoted comma; a pretty-printed JSON array with one
    syntax error."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_text("\n".join([*(_alpaca(i, t) for i, t in enumerate(TASKS)), NO_ID_LINE,
                                               NO_ID_LINE]) + "\n")
    (folder / "b.jsonl").write_text("\n".join([*(_alpaca(i, t) for i, t in enumerate(OTHER_TASKS)), NO_ID_LINE])
                                    + "\n")
    (folder / "c.csv").write_bytes(b"\xef\xbb\xbfid,prompt,completion\n"
                                   b"c1,What is 2 + 2?,4\n"
                                   b"c2,Sort 5, 3 and 4.,3 4 5\n"  # the comma in the prompt is not quoted
                                   b"c3,What comes after 9?,10\n")
    records = [{"id": "j1", "prompt": "What is 7 + 7?", "completion": "14"},
               {"id": "j2", "prompt": "Sort 2 9 5.", "completion": "2 5 9"},
               {"id": "j3", "prompt": "What comes after 99?", "completion": "100"}]
    pretty = json.dumps(records, indent=2).replace('"completion": "2 5 9"', '"completion" "2 5 9"')
    (folder / "d.json").write_text(pretty)
    return [{"path": str(folder / name)} for name in ("a.jsonl", "b.jsonl", "c.csv", "d.json")]


def configured(base: dict, workdir: Path, sources: list[dict], **data) -> dict:
    raw = {**copy.deepcopy(base), "workdir": str(workdir)}
    raw["data"].update({"sources": sources, "eval_sets": [], "eval_size": 2, **data})
    return raw


def write_config(raw: dict, path: Path) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class Curated:
    raw: dict
    workdir: Path
    manifest: DatasetManifest
    report: str


@pytest.fixture(scope="module")
def curated(ray_local, demo_config_base, tmp_path_factory) -> Curated:
    """One curation of the tricky sources through `raylora curate`."""
    root = tmp_path_factory.mktemp("data-safety")
    raw = configured(demo_config_base, root / "work", write_sources(root / "data"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["curate", write_config(raw, root / "curate.yaml")]) == EXIT_OK
    cfg = validate_config(raw)
    return Curated(raw=raw, workdir=root / "work",
                   manifest=DatasetManifest.read(cfg.path("curated", "manifest.json")), report=printed.getvalue())


def test_rows_are_told_apart_by_key_and_duplicates_by_content(curated):
    manifest = curated.manifest
    kept = [row for path in manifest.train_paths + manifest.eval_paths for row in pq.read_table(path).to_pylist()]
    dropped = {row["id"]: row for path in manifest.dropped_paths for row in pq.read_table(path).to_pylist()}

    # the id-less line, twice in a.jsonl and once in b.jsonl: the first is kept, the others are duplicates
    assert {key: (row["reason"], row["detail"]) for key, row in dropped.items() if row["reason"] != "malformed"} == {
        "a:8": ("exact_duplicate", "duplicate of a:7"), "b:7": ("exact_duplicate", "duplicate of a:7")}
    # both sources numbered 0..5 with different tasks: every row kept, under its own key, with the user's id
    by_source = Counter(row["source"] for row in kept)
    assert by_source["a"] == len(TASKS) + 1 and by_source["b"] == len(OTHER_TASKS)
    assert sorted(row["user_id"] for row in kept if row["source"] in "ab" and row["user_id"]) == sorted(
        [str(i) for i in range(6)] * 2)
    # one bad record, one malformed row: the CSV row with an unquoted comma and the broken JSON item
    malformed = {key: row["detail"] for key, row in dropped.items() if row["reason"] == "malformed"}
    assert sorted(malformed) == ["c:3", "d:2"]
    assert malformed["c:3"] == "4 fields where the header has 3: quote fields that hold commas"
    assert malformed["d:2"].startswith("not JSON: Expecting ':' delimiter: line 10")
    assert {row["user_id"] for row in kept if row["source"] in "cd"} == {"c1", "c3", "j1", "j3"}  # BOM: id read

    # read = kept + dropped, and the split holds exactly eval_size rows
    assert manifest.num_read == 8 + 7 + 3 + 3 == manifest.num_kept + manifest.num_dropped
    assert (manifest.num_eval, manifest.dropped_by_reason) == (2, {"exact_duplicate": 2, "malformed": 2})

    # repeated user ids are reported, in the manifest and the report, and nothing is dropped for them
    assert manifest.repeated_user_ids["ids"] == 6 and manifest.repeated_user_ids["rows"] == 12
    assert "6 ids are on more than one row (12 rows" in curated.report

    # the train stage's contract: a unique string id per kept row, which its sharding hashes
    ids = [row["id"] for row in read_rows(manifest.train_paths + manifest.eval_paths)]
    assert len(set(ids)) == len(ids) == manifest.num_kept
    assert {stable_shard(row_id, 2) for row_id in ids} == {0, 1}


def test_a_failed_curation_leaves_the_last_good_output_as_it_was(curated, tmp_path, capsys):
    before = snapshot(curated.workdir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "x", "instruction": "What is 3 + 4?", "output": ""}\n')
    with pytest.raises(StageError, match="every row was dropped"):
        curate(validate_config({**curated.raw, "data": {**curated.raw["data"], "sources": [{"path": str(empty)}]}}),
               quiet=True)
    missing = configured(curated.raw, curated.workdir, [*curated.raw["data"]["sources"],
                                                        {"path": str(tmp_path / "nowhere.jsonl")}])
    assert main(["curate", write_config(missing, tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert "nowhere.jsonl does not exist" in capsys.readouterr().err
    assert snapshot(curated.workdir) == before  # no staging left behind either


@pytest.mark.parametrize("output_dir", ["..", ".", "", "/tmp/curated", "../elsewhere", "curated/../.."])
def test_an_output_dir_outside_the_workdir_is_a_config_error(demo_config_dict, output_dir):
    raw = {**demo_config_dict, "curate": {**demo_config_dict["curate"], "output_dir": output_dir}}
    with pytest.raises(ConfigError, match="curate.output_dir.*subdirectory inside workdir"):
        validate_config(raw)


def test_the_cli_rejects_a_bad_output_dir_before_touching_anything(demo_config_dict, tmp_path, capsys):
    workdir = Path(demo_config_dict["workdir"])
    workdir.mkdir(parents=True)
    (workdir / "mlflow.db").write_text("runs")
    raw = {**demo_config_dict, "curate": {**demo_config_dict["curate"], "output_dir": ".."}}
    assert main(["curate", write_config(raw, tmp_path / "bad.yaml")]) == EXIT_USAGE
    assert "curate.output_dir=curated" in capsys.readouterr().err
    assert (workdir / "mlflow.db").read_text() == "runs"


def test_curation_never_replaces_a_directory_it_did_not_write(demo_config_dict):
    raw = {**demo_config_dict, "curate": {**demo_config_dict["curate"], "output_dir": "data"}}
    data = Path(raw["workdir"]) / "data"
    data.mkdir(parents=True)
    (data / "alpaca.jsonl").write_text("{}\n")
    with pytest.raises(StageError, match="holds files curation did not write"):
        curate(validate_config(raw), quiet=True)
    assert (data / "alpaca.jsonl").read_text() == "{}\n"
