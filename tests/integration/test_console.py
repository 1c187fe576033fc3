"""What `raylora train` shows on the terminal: raylora's lines, and none of Ray's or the libraries' chatter.

    .venv/bin/python -m pytest tests/integration/test_console.py -q

The command runs in a subprocess, and so on a Ray cluster of its own rather than the session's shared one:
what reaches a terminal is settled per process (Ray's log_to_driver, logging handlers, warning filters).
A worker is killed mid-run, which is when Ray is loudest; the restored group continues the step counter.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from pipelines.config import validate_config
from pipelines.train.driver import FAULT_KILL_ENV, TEST_HOOKS_ENV

REPO = Path(__file__).resolve().parents[2]
NOISE = ["PlacementGroupCleaner", "Reporting training result", "gemm_4bit_forward", "FutureWarning",
         "DeprecationWarning", "UserWarning", "Traceback", "(RayTrainWorker", "(TrainController",
         "Token authentication", "MLflow database"]


def test_train_shows_progress_a_worker_failure_and_the_summary_and_nothing_else(ray_train_of_its_own, demo_config_dict,
                                                                                curated_manifest,
                                                                                tmp_path):
    raw = copy.deepcopy(demo_config_dict)
    raw["run_name"] = "console"
    raw["model"]["max_seq_len"] = 128
    raw["train"].update({"max_steps": 4, "micro_batch_size": 4, "warmup_ratio": 0.0, "log_every": 1,
                         "eval_every": 2, "checkpoint_every": 2, "eval_generate_limit": 2, "eval_max_new_tokens": 2})
    raw["cluster"].update({"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 1})
    curated_manifest.write(Path(raw["workdir"]) / "curated" / "manifest.json")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, TEST_HOOKS_ENV: "1", FAULT_KILL_ENV: "3"}  # the last rank dies at step 3
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", str(config)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown

    lines = [line for line in done.stdout.splitlines() if line.startswith("[raylora train]")]
    steps = [line.split("]", 1)[1].split(" loss")[0].strip() for line in lines
             if " loss " in line and "eval_loss" not in line]
    # one line per log window; rank 0 may finish step 3 before its peer's death stops it, then redoes it
    assert sorted(set(steps)) == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"] and len(steps) in (4, 5), steps
    assert sum("eval_loss" in line for line in lines) == 2  # steps 2 and 4
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1 and "restarting from the step-2 checkpoint" in failed[0], shown
    assert any(line.endswith("from scratch") for line in lines) and any(
        line.endswith("resumed at step 2") for line in lines)
    assert "adapter " in done.stdout and "eval_loss" in done.stdout.split(lines[-1])[-1]  # the summary, last
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} reached the terminal:\n{shown}"
    assert (Path(raw["workdir"]) / "logs" / "libraries.log").is_file()  # where the chatter went

    # the restored group continued the step counter: steps 1-2 before the death, 3-4 after, none repeated
    result = json.loads(next(Path(raw["workdir"]).glob("train/console/*/train_result.json")).read_text())
    assert result["metrics"]["resumed_from_step"] == 2 and result["metrics"]["step"] == 4
    history = MlflowClient(validate_config(raw).tracking_uri).get_metric_history(result["mlflow_run_id"], "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]


def test_stopping_the_relay_prints_what_it_holds_and_ends_its_thread(ray_local, capsys):
    """The CLI stops the relay before exiting: a drain thread still inside ``ray.get`` while Ray's exit handler
    tears down the core worker can crash the process after a finished run."""
    from pipelines.console import relay_worker_lines, stop_relaying

    @ray_local.remote(num_cpus=0)
    def speak() -> None:
        from pipelines.console import say

        say("[raylora test] from a worker")

    relay_worker_lines()
    drains = [thread for thread in threading.enumerate() if thread.name == "raylora-console"]
    ray_local.get(speak.remote())
    shown = ""
    for _ in range(40):  # the worker's line travels through the relay actor, not in order with our calls
        shown += capsys.readouterr().out
        if "from a worker" in shown:
            break
        time.sleep(0.25)
    stop_relaying()
    assert "[raylora test] from a worker" in shown
    assert drains and not any(thread.is_alive() for thread in drains)
    stop_relaying()  # idempotent: nothing relays any more
