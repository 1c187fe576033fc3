"""The studies' reduced versions (one seed, a few steps) through the user's door, `raylora study NAME CONFIG
--reduced`, on the session's curated data and one shared workdir: each writes a table with one row per grid
point and seed, a plot and a verdict whose numbers are the table's, and its MLflow runs sit under one parent.
One seed can never give a finding, so every reduced verdict must say inconclusive.

`make test` runs the studies in ``IN_SUITE``; every one of the ten runs in `make test-all` (the others are marked
slow), or alone with ``pytest tests/integration/test_study.py -m ''`` (about 12 min on 2 cores)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.cli import EXIT_OK, main
from pipelines.study import load_study, study_names
from pipelines.study.report import read_table
from pipelines.study.verdict import INCONCLUSIVE

TINY_HIDDEN_SIZE = 128
# the fewest eval generations (the reduced runs check the machinery, not the model), and two trials at a time
# on the session's 2 CPUs (a trial's worker takes 0.9 of one; its driver 0.01)
FAST_EVAL = ["train.eval_generate_limit=1", "train.eval_max_new_tokens=2", "tune.max_concurrent_trials=2",
             "cluster.cpus_per_worker=0.9"]

# The suite's budget has room for one study's trials (a trial is a Ray Train run: about 45 s of a trial actor, the
# Train controller and its helper actors, and a worker, before its two steps). data-quality uses the most of the
# machinery: data variants curated by the curation stage, a claim on quality. The other nine, with claims on
# memory and time and over a sum of points, run in `make test-all`, and tests/unit/test_study_schema.py checks
# every study's schema and reduced grid.
IN_SUITE = ("data-quality",)
EVERY_STUDY = [pytest.param(name, marks=() if name in IN_SUITE else pytest.mark.slow) for name in study_names()]


@dataclass(frozen=True)
class Studied:
    workdir: Path
    config: Path
    printed: str  # what `raylora study` printed


@pytest.fixture(scope="module")
def study_workdir(ray_train, curated_by_stage, tmp_path_factory) -> Path:
    """One workdir for every study of the module (the session's curated data copied in, not curated again),
    holding the demo's data files, which some studies name by their path under .raylora/."""
    from pipelines.config import validate_config
    from pipelines.demo.assets import build_demo_assets

    workdir = tmp_path_factory.mktemp("studies")
    build_demo_assets(validate_config({**curated_by_stage.config, "workdir": str(workdir / ".raylora")}))
    (workdir / "curated").mkdir()
    shutil.copy(curated_by_stage.workdir / "curated" / "manifest.json", workdir / "curated" / "manifest.json")
    (workdir / "study.yaml").write_text(yaml.safe_dump({**curated_by_stage.config, "workdir": str(workdir)}))
    return workdir


@pytest.fixture(scope="module")
def studied(study_workdir) -> Callable[[str], Studied]:
    """``studied(name)``: the study, reduced, run once per module on first use, from its workdir."""
    import contextlib
    import io

    done: dict[str, Studied] = {}

    def run(name: str) -> Studied:
        if name not in done:
            config, printed = study_workdir / "study.yaml", io.StringIO()
            with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
                patch.chdir(study_workdir)
                assert main(["study", name, str(config), "--reduced", *FAST_EVAL]) == EXIT_OK, name
            done[name] = Studied(study_workdir, config, printed.getvalue())
        return done[name]

    return run


def number(cell: str) -> float:
    return float(cell)


def side_from_table(rows: list[dict[str, str]], selectors: list[dict], seed: str, metric: str) -> float:
    total = 0.0
    for selector in selectors:
        values = [number(r[metric]) for r in rows
                  if r["seed"] == seed and all(r[k] == str(v) for k, v in selector.items())]
        total += sum(values) / len(values)
    return total


@pytest.mark.parametrize("name", EVERY_STUDY)
def test_a_reduced_study_writes_its_table_plot_and_a_verdict_made_of_the_tables_numbers(studied, name):
    printed = studied(name).printed
    study = load_study(name)
    out = studied(name).workdir / "studies" / name
    grid = study.scaled_grid(TINY_HIDDEN_SIZE, reduced=True)
    seeds = study.run_seeds(reduced=True)

    rows = read_table((out / "table.md").read_text())
    points = math.prod(len(values) for values in grid.values()) * max(1, len(study.data))
    assert len(rows) == points * len(seeds)
    assert {r["seed"] for r in rows} == {str(s) for s in seeds}
    assert all(r["error"] == "-" for r in rows)
    for claim in study.claims:
        assert all(number(r[claim.metric]) > 0 for r in rows), claim.metric
    assert all(0 < number(r["eval_loss"]) < 20 for r in rows)

    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "plot.png").stat().st_size > 10_000

    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["reduced"] is True and verdict["grid"] == grid and verdict["seeds"] == seeds
    assert len(verdict["claims"]) == len(study.claims)
    for claim in verdict["claims"]:
        for seed, difference in claim["per_seed_difference"].items():
            a = side_from_table(rows, claim["a"], seed, claim["metric"])
            b = side_from_table(rows, claim["b"], seed, claim["metric"])
            # the table shows 6 significant digits: each value within 5e-6 of itself
            assert difference == pytest.approx(a - b, abs=1e-5 * (abs(a) + abs(b)))
        assert claim["n"] == len(seeds) and claim["mean"] == pytest.approx(
            sum(claim["per_seed_difference"].values()) / len(seeds))
        assert claim["verdict"] == INCONCLUSIVE and "a verdict needs at least 3" in claim["why"]
    assert verdict["verdict"] == INCONCLUSIVE
    assert f"raylora study: {name}: inconclusive; table, plot and verdict in {out}" in printed


@pytest.mark.parametrize("name", EVERY_STUDY)
def test_a_studys_runs_sit_under_one_mlflow_parent_run(studied, name):
    workdir = studied(name).workdir
    verdict = json.loads((workdir / "studies" / name / "verdict.json").read_text())
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    study_run = client.get_run(verdict["mlflow_run_id"])
    assert study_run.info.status == "FINISHED"
    assert study_run.data.tags["raylora.verdict"] == verdict["verdict"]
    assert {a.path for a in client.list_artifacts(study_run.info.run_id, "study")} >= {
        "study/table.md", "study/plot.png", "study/verdict.json"}
    searches = client.search_runs([study_run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{study_run.info.run_id}'")
    assert sorted(r.info.run_id for r in searches) == sorted(verdict["searches"].values())
    trials = [run for search in searches for run in client.search_runs(
        [study_run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{search.info.run_id}'")]
    assert len(trials) == len(read_table((workdir / "studies" / name / "table.md").read_text()))
    assert all(run.info.status == "FINISHED" for run in trials)


def test_the_same_study_again_reports_its_verdict_without_training(studied, capsys):
    name = IN_SUITE[0]
    first = studied(name)
    trained = sorted(first.workdir.glob("train/*/*/train_result.json"))
    capsys.readouterr()
    assert main(["study", name, str(first.config), "--reduced", *FAST_EVAL]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"raylora study: {name} (" in out and "already ran: inconclusive" in out
    assert sorted(first.workdir.glob("train/*/*/train_result.json")) == trained
