"""The tune stage on real Ray Tune around real Ray Train: an ASHA search with more trials than fit at once
runs to completion on 2 CPUs (stopped trials give their CPU back) and is reported when run again; a search whose
driver was killed is restored without rerunning its finished trials (a slow variant: `make test-all`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from planted import PLANTED_SECRET, RUNTIME_ENV_WITH_SECRET, files_holding

from pipelines.artifacts import TrainResult, TuneResult
from pipelines.cli import EXIT_OK, main

# Trials run one at a time on 2 CPUs, in grid order: 3e-3 has nothing to be compared with and trains to the end;
# lr 1e-6 barely moves the loss, so ASHA, keeping the better half at each rung, stops it at its first rung
LRS = [3e-3, 1e-6, 2e-3]
MAX_STEPS = 6


def search_config(curated_by_stage, workdir: Path, address: str) -> Path:
    (workdir / "curated").mkdir(parents=True)
    shutil.copy(curated_by_stage.workdir / "curated" / "manifest.json", workdir / "curated" / "manifest.json")
    raw = {**curated_by_stage.config, "workdir": str(workdir), "run_name": "search"}
    raw["train"] = {**raw["train"], "max_steps": MAX_STEPS, "eval_every": 2, "checkpoint_every": 2,
                    "micro_batch_size": 8, "eval_generate_limit": 2}
    raw["tune"] = {"enabled": True, "search": "grid", "num_samples": 1, "search_space": {"train.lr": {"grid": LRS}},
                   "scheduler": "asha", "grace_period": 1, "reduction_factor": 2}
    raw["cluster"] = {**raw["cluster"], "address": address, "runtime_env": RUNTIME_ENV_WITH_SECRET}
    path = workdir.with_name("search.yaml")  # beside the workdir: it holds the planted token, the workdir must not
    path.write_text(yaml.safe_dump(raw))
    return path


def run_until(proc: subprocess.Popen, marker: str, after: str, timeout_s: float) -> list[str]:
    """The subprocess's lines up to the first ``after`` line that follows a ``marker`` line."""
    lines, seen, deadline = [], False, time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line)
        seen = seen or marker in line
        if seen and after in line and marker not in line:
            return lines
        assert time.monotonic() < deadline, "".join(lines[-20:])
    raise AssertionError("the search ended before it could be killed:\n" + "".join(lines[-20:]))


def the_finished_search(workdir: Path) -> TuneResult:
    """The search's result, trials, best trial and MLflow runs, as a finished ASHA search leaves them."""
    result = TuneResult.read(workdir / "tune" / "search" / "tune_result.json")
    assert len(result.trials) == len(LRS)
    by_lr = {t["params"]["train.lr"]: t for t in result.trials}
    stopped = [t for t in result.trials if t["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    assert all(t["steps"] < MAX_STEPS and t["train_result"] is None for t in stopped)
    assert all(t["error"] is None for t in result.trials)
    assert by_lr[3e-3]["steps"] == MAX_STEPS and not by_lr[3e-3]["stopped_early"]
    best = result.best_trial
    assert best["params"]["train.lr"] in (3e-3, 2e-3)
    assert best["metrics"]["eval_loss"] == min(t["metrics"]["eval_loss"] for t in result.trials
                                               if not t["stopped_early"])
    train_result = TrainResult.read(result.best_train_result)
    assert Path(train_result.adapter_path, "adapter_config.json").is_file()
    assert train_result.config["train"]["lr"] == best["params"]["train.lr"]
    assert all(Path(p).stat().st_size > 5_000 for p in result.plots)

    # MLflow: one parent run for the search, every trial nested under it, stopped ones KILLED
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["final_best_eval_loss"] == pytest.approx(best["metrics"]["eval_loss"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == len(LRS)
    statuses = sorted(run.info.status for run in children)
    assert statuses.count("KILLED") == len(stopped)
    assert statuses.count("FINISHED") == len(LRS) - len(stopped)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/search_eval_loss_by_param.png", "search/search_curves.png", "search/result"} <= artifacts
    # the config's token is in no trial's config, result, MLflow param or Ray Tune's own experiment state
    assert files_holding(PLANTED_SECRET, workdir) == []
    return result


def test_an_asha_search_runs_to_the_end_and_the_same_search_again_is_reported(ray_train, curated_by_stage,
                                                                             tmp_path, capsys):
    workdir = tmp_path / "work"
    config = search_config(curated_by_stage, workdir, ray_train.get_runtime_context().gcs_address)
    assert main(["tune", str(config)]) == EXIT_OK
    result = the_finished_search(workdir)

    # the same search again is reported, not rerun
    assert main(["tune", str(config)]) == EXIT_OK
    assert "already finished" in capsys.readouterr().out
    assert json.loads((workdir / "tune" / "search" / "tune_result.json").read_text())["fingerprint"] == \
        result.fingerprint


@pytest.mark.slow  # the search above, killed and restored: a second search's trials
def test_a_killed_search_driver_resumes_without_training_its_finished_trials_again(ray_train, curated_by_stage,
                                                                                  tmp_path, capsys):
    workdir = tmp_path / "work"
    config = search_config(curated_by_stage, workdir, ray_train.get_runtime_context().gcs_address)

    # 1. the search in its own driver process, killed once its first trial trained to the end
    proc = subprocess.Popen([str(Path(sys.executable).parent / "raylora"), "tune", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"})
    try:
        before = run_until(proc, "trained to the end", "step 2:", timeout_s=600)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = next(line.split()[2] for line in before if "trained to the end" in line)
    first_results = sorted(workdir.glob("train/search-trial*/*/train_result.json"))
    assert len(first_results) == 1
    written_at = first_results[0].stat().st_mtime_ns

    # 2. the same command again, through the user's door: restored, finished trials kept
    assert main(["tune", str(config)]) == EXIT_OK
    after = capsys.readouterr().out
    assert "stopped before it finished: restoring it" in after
    assert f"{first} started" not in after
    assert first_results[0].stat().st_mtime_ns == written_at  # the finished trial was not trained again

    the_finished_search(workdir)
