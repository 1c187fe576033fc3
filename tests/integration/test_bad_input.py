"""Bad input found before any work: one line naming the fix, exit 2, and nothing written before changed (issue 34).

    .venv/bin/python -m pytest tests/integration/test_bad_input.py -q

Every case goes through the user's door (``pipelines.cli.main``) against a workdir that already holds a curation
(and, for the resource cases, the session's 2-CPU Ray cluster): the error is one line on stderr, stdout says
nothing of a traceback, and every file that was there before is byte for byte what it was.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.cli import EXIT_OK, EXIT_USAGE, main
from pipelines.config import validate_config


@dataclass(frozen=True)
class World:
    config: Path  # a good config whose workdir holds a curation
    workdir: Path
    files: Path  # where the cases' bad files lie


@pytest.fixture(scope="module")
def world(curated_by_stage, tiny_model_path, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    workdir = root / "work"
    shutil.copytree(curated_by_stage.workdir / "curated", workdir / "curated")
    raw = {**copy.deepcopy(curated_by_stage.config), "workdir": str(workdir)}
    raw["train"] = {**raw["train"], "max_steps": 2}
    config = root / "good.yaml"
    config.write_text(yaml.safe_dump(raw))
    files = root / "files"
    (files / "empty-dir").mkdir(parents=True)
    (files / "config-only").mkdir()
    shutil.copy(tiny_model_path / "config.json", files / "config-only" / "config.json")
    source = Path(raw["data"]["sources"][0]["path"])
    (files / "rows.jsonl.gz").write_bytes(gzip.compress(source.read_bytes()))
    (files / "a-file").write_text("not a directory\n")
    (files / "empty.jsonl").write_text("")
    (files / "twice.yaml").write_text(config.read_text() + "seed: 1\nseed: 2\n")
    return World(config=config, workdir=workdir, files=files)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (but the library log, which only grows) by content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.parent.name != "logs"}


def raylora(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# (id, command and its arguments after CONFIG, the one line's start (after "raylora COMMAND: "), a part of it)
# {files} is the folder of bad files, {config} the good config
CASES = [
    ("yaml-key-twice", ["config", "{files}/twice.yaml"], "{files}/twice.yaml line", "key 'seed' is given twice"),
    ("run-name-dots", ["train", "{config}", "run_name=.."], "invalid config: run_name: run_name=..",
     "would name the directory above the runs"),
    ("source-is-a-directory", ["curate", "{config}", "data.sources=[{{path: {files}/empty-dir}}]"],
     "data.sources[0].path={files}/empty-dir is a directory", "name its files with a glob, e.g."),
    ("source-missing", ["curate", "{config}", "data.sources=[{{path: {files}/absent.jsonl}}]"],
     "data.sources[0].path={files}/absent.jsonl does not exist", "fix the path"),
    ("source-glob-matches-nothing", ["curate", "{config}", "data.sources=[{{path: '{files}/*.parquet'}}]"],
     "data.sources[0].path={files}/*.parquet matches no file", "fix the pattern"),
    ("source-compressed", ["curate", "{config}", "data.sources=[{{path: {files}/rows.jsonl.gz}}]"],
     "data.sources[0].path: {files}/rows.jsonl.gz is not a file type curation reads", "gunzip -k"),
    ("eval-set-missing-curate", ["curate", "{config}", "data.eval_sets=[{files}/absent-eval.jsonl]"],
     "data.eval_sets[0]={files}/absent-eval.jsonl does not exist", "drop it from data.eval_sets"),
    ("eval-set-missing-train", ["train", "{config}", "data.eval_sets=[{files}/absent-eval.jsonl]"],
     "data.eval_sets[0]={files}/absent-eval.jsonl does not exist", "drop it from data.eval_sets"),
    ("base-empty-directory-curate", ["curate", "{config}", "model.base={files}/empty-dir"],
     "model.base={files}/empty-dir is a directory without a model's config.json", "save_pretrained"),
    ("base-empty-directory-train", ["train", "{config}", "model.base={files}/empty-dir"],
     "model.base={files}/empty-dir is a directory without a model's config.json", "save_pretrained"),
    ("base-without-tokenizer", ["train", "{config}", "model.base={files}/config-only"],
     "model.base={files}/config-only holds no tokenizer", "tokenizer.save_pretrained"),
    ("base-missing-path", ["train", "{config}", "model.base={files}/absent-model"],
     "model.base={files}/absent-model does not exist", "give a Hugging Face id"),
    ("plan-base-empty-directory", ["plan", "{config}", "model.base={files}/empty-dir"],
     "model.base={files}/empty-dir is a directory without a model's config.json", "or pass --model-config"),
    ("workdir-is-a-file", ["train", "{config}", "workdir={files}/a-file"], "workdir={files}/a-file is a file",
     "point workdir at a directory"),
    ("workdir-unwritable", ["train", "{config}", "workdir=/sys/raylora-test-workdir"],
     "workdir=/sys/raylora-test-workdir cannot be written", "a directory you can write"),
    ("source-empty", ["curate", "{config}", "data.sources=[{{path: {files}/empty.jsonl, format: alpaca}}]",
                      "curate.output_dir=curated-empty"], "the sources hold no rows", "files with rows"),
    ("max-seq-len-cuts-every-answer", ["train", "{config}", "model.max_seq_len=10"],
     "model.max_seq_len=10 cuts the answer off every train row", "set model.max_seq_len="),
    ("too-little-data-for-a-step", ["train", "{config}", "train.micro_batch_size=100000"],
     "", "cannot fill one step of cluster.num_workers x train.micro_batch_size x train.grad_accum"),
    ("more-workers-than-cpus", ["train", "{config}", "cluster.num_workers=4"],
     "training asks for cluster.num_workers=4 x 1 CPU per worker: 4 CPU (the cluster has 2) in all",
     "lower cluster.num_workers"),
    ("worker-larger-than-a-node", ["train", "{config}", "cluster.cpus_per_worker=3"],
     "training asks for cluster.num_workers=1 x 3 CPU per worker, and no node of the cluster has 3 CPU",
     "(the largest has 2)"),
    ("search-trial-larger-than-the-cluster", ["tune", "{config}", "cluster.num_workers=2"],
     "each search trial asks for cluster.num_workers=2 x 1 CPU per worker: 2.01 CPU (the cluster has 2) in all",
     "join a larger cluster"),
]


@pytest.mark.parametrize(("argv", "starts", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written_before_changes(world, ray_local, argv, starts, says):
    fill = {"config": world.config, "files": world.files}
    argv = [part.format(**fill) for part in argv]
    before = snapshot(world.workdir)
    code, out, err = raylora(*argv)
    assert code == EXIT_USAGE, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, err
    assert err.startswith(f"raylora {argv[0]}: {starts.format(**fill)}") and says.format(**fill) in err, err
    assert {k: v for k, v in snapshot(world.workdir).items() if k in before} == before


def test_a_source_that_gives_nothing_is_named_in_the_counts_and_warned_about(world, ray_local, sample_data):
    raw = yaml.safe_load(world.config.read_text())
    malformed = world.files / "malformed.jsonl"
    malformed.write_text("{not json\n[1, 2]\n")
    raw["data"]["sources"] = [*raw["data"]["sources"][:1],
                              {"path": str(world.files / "empty.jsonl"), "format": "alpaca", "name": "empty"},
                              {"path": str(malformed), "format": "alpaca", "name": "broken"}]
    raw["curate"] = {**raw.get("curate", {}), "output_dir": "curated-with-empty"}
    config = world.files / "with-empty.yaml"
    config.write_text(yaml.safe_dump(raw))
    code, out, _ = raylora("curate", str(config))
    assert code == EXIT_OK, out
    assert "warning: source empty holds no rows: check its data.sources[].path" in out
    assert "warning: source broken: all 2 rows were dropped, most as malformed" in out
    manifest = json.loads((world.workdir / "curated-with-empty" / "manifest.json").read_text())
    assert manifest["per_source"]["empty"] == {"read": 0, "kept": 0, "dropped": 0}
    assert manifest["per_source"]["broken"] == {"read": 2, "kept": 0, "dropped": 2}


def test_a_problem_only_a_worker_sees_ends_the_run_at_once_with_exit_2(world, ray_train):
    # the driver counts rows (enough for a micro-batch of all of them); packed, they fill fewer blocks, which only
    # the worker's counting pass finds: a ConfigError there is not retried, as the same config fails the same way
    num_train = json.loads((world.workdir / "curated" / "manifest.json").read_text())["num_train"]
    cfg_args = ["train", str(world.config), f"train.micro_batch_size={num_train}", "cluster.max_failures=3",
                "run_name=packed-too-few"]
    code, out, err = raylora(*cfg_args)
    assert code == EXIT_USAGE, out + err
    assert err.strip().splitlines()[-1] == ("raylora train: rank 0 got no full batch from the train data: lower "
                                            "train.micro_batch_size")
    assert "restarting" not in out and "failed (" not in out  # no worker group was started again
    cfg = validate_config(yaml.safe_load(world.config.read_text()))
    client = MlflowClient(cfg.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                              filter_string="tags.`mlflow.runName` LIKE 'packed-too-few%'")
    assert [run.info.status for run in runs] == ["FAILED"]


def test_a_run_that_waits_for_resources_says_what_it_waits_for_at_each_interval(ray_local, capsys):
    # possible but not now (here: another placement group holds both CPUs): the run waits, and says so
    import time

    from ray.util.placement_group import placement_group, remove_placement_group

    from cluster.resources import waiting_lines

    holder = placement_group([{"CPU": 2}])
    ray_local.get(holder.ready(), timeout=60)
    waiting = placement_group([{"CPU": 1}, {"CPU": 1}])
    try:
        with waiting_lines(every_s=1.0):
            time.sleep(2.5)
    finally:
        remove_placement_group(waiting)
        remove_placement_group(holder)
    lines = capsys.readouterr().out.splitlines()
    assert lines and lines[0] == ("raylora: waiting 1s for the cluster to place 2 worker(s): 2 CPU (free now 0); "
                                  "another job holds them, or an autoscaler is adding nodes"), lines
