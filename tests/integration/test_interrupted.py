"""Ctrl-C, as a terminal sends it (SIGINT to the command's process group): `raylora train` and `raylora curate`
stop within seconds with one line and exit 130; the MLflow run is KILLED; what was there before is untouched
(issue 34).

    .venv/bin/python -m pytest tests/integration/test_interrupted.py -q

Each command runs in a subprocess of its own session, so on a Ray cluster of its own, as a user's would.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config import validate_config

REPO = Path(__file__).resolve().parents[2]
STOPPED_WITHIN_S = 20  # the aim is a few seconds; this bound only catches a command that goes on training


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
                             *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def ctrl_c_when(proc: subprocess.Popen, ready, timeout_s: float = 300) -> tuple[int, str, str, float]:
    """SIGINT to the process group once ``ready()`` holds; the exit code, stdout, stderr and the seconds the
    command took to stop after the signal."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got ready to be interrupted"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        with_group_gone(proc)
    return proc.returncode, out, err, time.monotonic() - sent


def with_group_gone(proc: subprocess.Popen) -> None:
    """Whatever the command left in its process group (a local Ray cluster's processes) is stopped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow  # a Ray cluster and a Train run of its own (about 40 s); curation's Ctrl-C is in `make test`
def test_ctrl_c_stops_training_with_one_line_130_and_a_killed_mlflow_run(ray_train_of_its_own, curated_by_stage,
                                                                        tmp_path):
    raw = {**copy.deepcopy(curated_by_stage.config), "workdir": str(tmp_path / "work"), "run_name": "stopped"}
    shutil.copytree(curated_by_stage.workdir / "curated", tmp_path / "work" / "curated")
    raw["train"] = {**raw["train"], "max_steps": 500, "checkpoint_every": 2, "eval_every": 2, "log_every": 1,
                    "eval_generate_limit": 1, "eval_max_new_tokens": 1}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = validate_config(raw)
    checkpoints = cfg.path("ray_results")

    proc = start("train", str(config))
    code, out, err, stopped_in = ctrl_c_when(
        proc, lambda: any(checkpoints.glob("*/checkpoint_*/train_state.rank0.json")))
    print(f"train stopped {stopped_in:.1f}s after Ctrl-C")
    assert code == 130, out + err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"raylora train: interrupted; rerun the same command to resume run stopped \(\w{12}\) from its "
                        r"step-\d+ checkpoint", last), err
    assert "Traceback" not in out + err and "Gracefully aborting" not in out + err
    assert stopped_in < STOPPED_WITHIN_S, err
    runs = MlflowClient(cfg.tracking_uri).search_runs(
        [MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]


def test_ctrl_c_stops_curation_and_leaves_the_last_output_as_it_was(ray_train_of_its_own, curated_by_stage, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(curated_by_stage.workdir / "curated", workdir / "curated")
    raw = {**copy.deepcopy(curated_by_stage.config), "workdir": str(workdir)}
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump(raw))
    before = snapshot(workdir / "curated")
    staging = workdir / ".curated.staging"

    proc = start("curate", str(config), "--force")
    code, out, err, stopped_in = ctrl_c_when(proc, staging.exists)
    print(f"curate stopped {stopped_in:.1f}s after Ctrl-C")
    assert code == 130, out + err
    assert err.strip().splitlines()[-1].startswith("raylora curate: interrupted; what it had finished is kept"), err
    assert "Traceback" not in out + err
    assert stopped_in < STOPPED_WITHIN_S, err
    assert snapshot(workdir / "curated") == before and not staging.exists()
