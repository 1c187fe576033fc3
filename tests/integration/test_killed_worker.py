"""A worker killed mid-run, through the user's door: what `raylora train` shows on the terminal (raylora's lines,
and none of Ray's or the libraries' chatter), and what the restored group trains on (the step counter goes on,
each rank resumes its own place in its shard).

    .venv/bin/python -m pytest tests/integration/test_killed_worker.py -q

The command runs in a subprocess, and so on a Ray cluster of its own rather than the session's shared one:
what reaches a terminal is settled per process (Ray's log_to_driver, logging handlers, warning filters).
A worker is killed mid-run, which is when Ray is loudest. One run serves every test of the module.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.artifacts import DatasetManifest
from pipelines.config import RayloraConfig, validate_config
from pipelines.train.data import train_batches
from pipelines.train.driver import FAULT_KILL_ENV, ROW_LOG_ENV, TEST_HOOKS_ENV
from pipelines.train.prepared import PreparedRows, prepare_dataset, prepared_batches

REPO = Path(__file__).resolve().parents[2]
NOISE = ["PlacementGroupCleaner", "Reporting training result", "gemm_4bit_forward", "FutureWarning",
         "DeprecationWarning", "UserWarning", "Traceback", "(RayTrainWorker", "(TrainController",
         "Token authentication", "MLflow database"]
STEPS, KILLED_AT, CHECKPOINT_EVERY = 8, 5, 2  # the last rank dies at step 5; the group restores step 4


def small_manifest(curated_manifest, out: Path, tokenizer, seq_len: int, micro_batch: int) -> DatasetManifest:
    """The first rows of the curated train split, as many as make the two ranks' epochs differ in length, so
    that at a checkpoint the ranks stand at different places of their shards."""
    rows = pq.read_table(curated_manifest.train_paths[0]).to_pylist()
    for count in range(40, 200, 7):
        lengths = [sum(1 for _ in train_batches(rows[:count], tokenizer, seq_len=seq_len, micro_batch_size=micro_batch,
                                                rank=rank, world_size=2)) for rank in (0, 1)]
        if min(lengths) >= 2 and lengths[0] != lengths[1]:
            break
    else:
        pytest.fail("no row count gives the two ranks epochs of different lengths")
    path = out / "small-train.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:count]), path)
    return dataclasses.replace(curated_manifest, train_paths=[str(path)], num_train=count, train_hash=f"small-{count}")


@dataclass(frozen=True)
class KilledRun:
    done: subprocess.CompletedProcess
    cfg: RayloraConfig
    manifest: DatasetManifest
    row_logs: Path  # rank<N>.jsonl: the rows each rank trained on at each step


@pytest.fixture(scope="module")
def killed_run(ray_train_of_its_own, demo_config_base, curated_manifest, tiny_model_path,
               tmp_path_factory) -> KilledRun:
    """`raylora train` on 2 workers with short epochs of different lengths per rank; the last rank SIGKILLs
    itself at step 5 and Ray restores the group from the step-4 checkpoint."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("killed-worker")
    raw = copy.deepcopy(demo_config_base)
    raw.update(workdir=str(root / "work"), run_name="killed")
    raw["model"]["max_seq_len"] = 128
    raw["data"]["eval_sets"] = []
    raw["train"].update({"max_steps": STEPS, "micro_batch_size": 4, "warmup_ratio": 0.0, "log_every": 1,
                         "eval_every": CHECKPOINT_EVERY, "checkpoint_every": CHECKPOINT_EVERY, "eval_generate_limit": 2,
                         "eval_max_new_tokens": 2})
    raw["cluster"].update({"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 1})
    manifest = small_manifest(curated_manifest, root, AutoTokenizer.from_pretrained(tiny_model_path), 128, 4)
    manifest.write(Path(raw["workdir"]) / "curated" / "manifest.json")
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    row_logs = root / "rows"
    row_logs.mkdir()
    env = {**os.environ, TEST_HOOKS_ENV: "1", FAULT_KILL_ENV: str(KILLED_AT), ROW_LOG_ENV: str(row_logs)}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", str(config)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return KilledRun(done, validate_config(raw), manifest, row_logs)


def test_train_shows_progress_a_worker_failure_and_the_summary_and_nothing_else(killed_run):
    done = killed_run.done
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown

    lines = [line for line in done.stdout.splitlines() if line.startswith("[raylora train]")]
    steps = [line.split("]", 1)[1].split(" loss")[0].strip() for line in lines
             if " loss " in line and "eval_loss" not in line]
    # one line per log window; rank 0 may finish step 5 before its peer's death stops it, then redoes it
    assert sorted(set(steps)) == [f"step {n}/{STEPS}" for n in range(1, STEPS + 1)], steps
    assert len(steps) in (STEPS, STEPS + 1), steps
    assert sum("eval_loss" in line for line in lines) == STEPS // CHECKPOINT_EVERY  # each checkpoint evaluates
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1 and "restarting from the step-4 checkpoint" in failed[0], shown
    assert any(line.endswith("from scratch") for line in lines) and any(
        line.endswith("resumed at step 4") for line in lines)
    assert "adapter " in done.stdout and "eval_loss" in done.stdout.split(lines[-1])[-1]  # the summary, last
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} reached the terminal:\n{shown}"
    assert killed_run.cfg.path("logs", "libraries.log").is_file()  # where the chatter went

    # the restored group continued the step counter: steps 1-4 before the death, 5-8 after, none repeated
    result = json.loads(next(killed_run.cfg.path("train", "killed").glob("*/train_result.json")).read_text())
    assert result["metrics"]["resumed_from_step"] == 4 and result["metrics"]["step"] == STEPS
    history = MlflowClient(killed_run.cfg.tracking_uri).get_metric_history(result["mlflow_run_id"], "train_loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))


def rows_per_step(log_dir: Path, rank: int) -> dict[int, list[str]]:
    """The rows a rank trained on at each step; a step logged twice (before the kill, again after the restore)
    keeps its last record."""
    steps: dict[int, list[str]] = {}
    for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record["rows"]
    return steps


def uninterrupted_rows(run: KilledRun, tiny_model_path: Path, rank: int) -> dict[int, list[str]]:
    """The rows a rank trains on at each step of a run that nothing interrupts: its shard of the prepared
    dataset, epoch after epoch, each shuffled by the seed plus the epoch (what the worker reads)."""
    cfg, steps, epoch = run.cfg, {}, 0
    rows = PreparedRows.open(prepare_dataset(cfg, run.manifest, str(tiny_model_path)))
    while len(steps) < STEPS:
        batches = prepared_batches(rows, seq_len=cfg.model.max_seq_len, micro_batch_size=cfg.train.micro_batch_size,
                                   rank=rank, world_size=cfg.cluster.num_workers, seed=cfg.train.seed + epoch,
                                   packing=cfg.train.packing)
        for batch in batches:
            steps[len(steps) + 1] = [row for block in batch["row_ids"] for row in block]
            if len(steps) == STEPS:
                break
        epoch += 1
    return steps


def test_each_rank_resumes_its_own_data_position(killed_run, tiny_model_path):
    """The ranks' epochs differ in length, so at the step-4 checkpoint they stand at different places of their
    shards: after the restore every rank trains on exactly the rows of an uninterrupted run."""
    assert killed_run.done.returncode == 0, killed_run.done.stderr[-3000:]
    expected = {rank: uninterrupted_rows(killed_run, tiny_model_path, rank) for rank in (0, 1)}
    assert expected[0][KILLED_AT] != expected[1][KILLED_AT]
    for rank in (0, 1):
        trained = rows_per_step(killed_run.row_logs, rank)
        assert sorted(trained) == list(range(1, STEPS + 1))
        assert trained == expected[rank], f"rank {rank} trained on other rows after the restore"


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
