"""Honest runs on real Ray Train + DeepSpeed: a changed config is a new run, each rank resumes its own place,
the best adapter is exported, there is always something to evaluate.

    .venv/bin/python -m pytest tests/integration/test_honest_runs.py -q
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.artifacts import DatasetManifest, curated_manifest_path
from pipelines.cli import EXIT_OK, EXIT_USAGE, main
from pipelines.config import validate_config
from pipelines.train import train
from pipelines.train.data import train_batches
from pipelines.train.driver import (
    FAULT_KILL_ENV,
    FAULT_SPOIL_ENV,
    ROW_LOG_ENV,
    TEST_HOOKS_ENV,
    read_test_hooks,
)
from pipelines.train.prepared import PreparedRows, prepare_dataset, prepared_batches

SMALL_TRAIN = {"max_steps": 4, "micro_batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0, "eval_every": 4,
               "checkpoint_every": 4, "log_every": 2, "eval_generate_limit": 2, "eval_max_new_tokens": 2}


def small_config(demo_config_dict, workdir: Path, **sections) -> dict:
    raw = {**demo_config_dict, "workdir": str(workdir)}
    raw["model"] = {**raw["model"], "max_seq_len": 128}
    raw["train"] = {**raw["train"], **SMALL_TRAIN, **sections.pop("train", {})}
    raw["cluster"] = {**raw["cluster"], "num_workers": 1, "cpus_per_worker": 1, **sections.pop("cluster", {})}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def write_config(raw: dict, path: Path) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def adapter_bytes(adapter_dir: str | Path) -> bytes:
    return (Path(adapter_dir) / "adapter_model.safetensors").read_bytes()


def test_a_changed_flag_is_a_new_run_and_the_same_flags_report_the_finished_one(
        ray_train, demo_config_dict, curated_by_stage, tmp_path, capsys):
    """Trains on what the curate stage wrote, through the CLI: lr and rank changed -> a new run (new adapter bytes,
    one line naming both changes, the old run kept, no state-dict mismatch with the old run's checkpoints); the
    same command again -> the finished run is reported, nothing trains."""
    curated_workdir = curated_by_stage.workdir
    config = write_config(small_config(demo_config_dict, curated_workdir), tmp_path / "run.yaml")
    cfg = validate_config(yaml.safe_load(Path(config).read_text()))
    manifest = DatasetManifest.read(curated_manifest_path(cfg))
    assert main(["train", config]) == EXIT_OK
    first = json.loads(next((curated_workdir / "train" / "demo").glob("*/train_result.json")).read_text())
    assert first["train_hash"] == manifest.train_hash and first["eval_hash"] == manifest.eval_hash
    capsys.readouterr()

    changed = ["train.lr=1e-4", "adapter.r=16"]
    assert main(["train", config, *changed]) == EXIT_OK
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "config changed since run" in line)
    assert f"config changed since run {first['fingerprint']} (" in line
    assert "train.lr: 0.003 -> 0.0001" in line and "adapter.r: 8 -> 16" in line
    results = {p.parent.name: json.loads(p.read_text())
               for p in (curated_workdir / "train" / "demo").glob("*/train_result.json")}
    assert len(results) == 2 and first["fingerprint"] in results, "the old run is kept"
    second = next(r for name, r in results.items() if name != first["fingerprint"])
    assert adapter_bytes(second["adapter_path"]) != adapter_bytes(first["adapter_path"])
    assert second["config"]["train"]["lr"] == 1e-4 and second["config"]["adapter"]["r"] == 16
    assert second["mlflow_run_id"] != first["mlflow_run_id"]
    params = MlflowClient(cfg.tracking_uri).get_run(second["mlflow_run_id"]).data.params
    assert (params["train.lr"], params["adapter.r"]) == ("0.0001", "16")

    assert main(["train", config, *changed]) == EXIT_OK
    assert "already finished at step 4" in capsys.readouterr().out


def rows_per_step(log_dir: Path, rank: int) -> dict[int, list[str]]:
    """The rows a rank trained on at each step; a step logged twice (before a kill, again after the restore)
    keeps its last record."""
    steps: dict[int, list[str]] = {}
    for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record["rows"]
    return steps


def small_manifest(curated_manifest, tmp_path: Path, tokenizer, seq_len: int, micro_batch: int) -> DatasetManifest:
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
    path = tmp_path / "small-train.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:count]), path)
    return dataclasses.replace(curated_manifest, train_paths=[str(path)], num_train=count, train_hash=f"small-{count}")


def uninterrupted_rows(cfg, manifest: DatasetManifest, tiny_model_path: Path, rank: int) -> dict[int, list[str]]:
    """The rows a rank trains on at each step of a run that nothing interrupts: its shard of the prepared
    dataset, epoch after epoch, each shuffled by the seed plus the epoch (what the worker reads)."""
    rows = PreparedRows.open(prepare_dataset(cfg, manifest, str(tiny_model_path)))
    t, world_size, steps, epoch = cfg.train, cfg.cluster.num_workers, {}, 0
    while len(steps) < t.max_steps:
        batches = prepared_batches(rows, seq_len=cfg.model.max_seq_len, micro_batch_size=t.micro_batch_size,
                                   rank=rank, world_size=world_size, seed=t.seed + epoch, packing=t.packing)
        for batch in batches:
            steps[len(steps) + 1] = [row for block in batch["row_ids"] for row in block]
            if len(steps) == t.max_steps:
                break
        epoch += 1
    return steps


def test_each_rank_resumes_its_own_data_position(ray_train, demo_config_dict, curated_manifest, tiny_model_path,
                                                 tmp_path, monkeypatch):
    """Two workers, short epochs of different lengths per rank; the last rank is killed at step 5 and the group
    restored from the step-4 checkpoint. Every rank trains on exactly the rows of an uninterrupted run."""
    from transformers import AutoTokenizer

    manifest = small_manifest(curated_manifest, tmp_path, AutoTokenizer.from_pretrained(tiny_model_path), 128, 4)
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    monkeypatch.setenv(ROW_LOG_ENV, str(tmp_path))
    monkeypatch.setenv(FAULT_KILL_ENV, "5")
    cfg = validate_config(small_config(
        demo_config_dict, tmp_path / "killed", run_name="killed", cluster={"num_workers": 2, "cpus_per_worker": 0.5},
        train={"max_steps": 8, "checkpoint_every": 2, "eval_every": 8}, data={"eval_sets": []}))
    result = train(cfg, manifest)
    assert result.metrics["resumed_from_step"] == 4 and result.metrics["step"] == 8
    for rank in (0, 1):
        expected = uninterrupted_rows(cfg, manifest, tiny_model_path, rank)
        killed = rows_per_step(tmp_path, rank)
        assert sorted(killed) == list(range(1, 9))
        assert killed == expected, f"rank {rank} trained on other rows after the restore"
    assert uninterrupted_rows(cfg, manifest, tiny_model_path, 0)[5] != uninterrupted_rows(
        cfg, manifest, tiny_model_path, 1)[5], "the ranks stand at different places"


def test_the_best_checkpoint_is_exported_and_kept_with_the_runs_lineage(ray_train, demo_config_dict,
                                                                        curated_manifest, tmp_path, monkeypatch):
    """The run is worse at its end than at every earlier eval by construction: after step 7 a test hook
    multiplies the model's logits by 1000, so the step-8 eval measures a confidently wrong model. The exported
    adapter is the best checkpoint's; the two best checkpoints are kept, and the latest (Ray keeps it to resume
    from), the fourth is deleted; the eval set is evaluated; the MLflow run carries the params and lineage tags."""
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    monkeypatch.setenv(FAULT_SPOIL_ENV, "7")
    cfg = validate_config(small_config(
        demo_config_dict, tmp_path, run_name="best",
        train={"max_steps": 8, "scheduler": "constant", "checkpoint_every": 2, "eval_every": 2,
               "keep_checkpoints": 2}))
    result = train(cfg, curated_manifest)
    client = MlflowClient(cfg.tracking_uri)
    evals = {m.step: m.value for m in client.get_metric_history(result.mlflow_run_id, "eval_loss")}
    best_step = min(evals, key=evals.get)
    assert sorted(evals) == [2, 4, 6, 8] and evals[8] > 10 * max(evals[2], evals[4], evals[6]), evals

    assert result.metrics["exported_step"] == best_step
    assert result.metrics["exported_eval_loss"] == pytest.approx(evals[best_step])
    assert adapter_bytes(result.adapter_path) == adapter_bytes(Path(result.checkpoint_path) / "adapter")
    kept = {json.loads((p / "train_state.rank0.json").read_text())["step"]
            for p in Path(result.checkpoint_path).parent.glob("checkpoint_*") if p.is_dir()}
    assert kept == {*sorted(evals, key=evals.get)[:2], 8}, "keep_checkpoints=2 keeps the two best and the latest"

    assert result.metrics["eval/eval/loss"] == pytest.approx(result.metrics["eval_loss"], rel=1e-6), \
        "the eval set holds the same rows as this manifest's held-out split"
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["train.lr"] == "0.003" and run.data.params["adapter.r"] == "8"
    assert {k: run.data.tags[k] for k in ("train_hash", "eval_hash", "raylora.fingerprint", "base_model")} == {
        "train_hash": curated_manifest.train_hash, "eval_hash": curated_manifest.eval_hash,
        "raylora.fingerprint": result.fingerprint, "base_model": "tiny"}


def test_nothing_to_evaluate_fails_before_workers_start_naming_the_fix(demo_config_dict, curated_manifest,
                                                                      tmp_path, capsys):
    raw = small_config(demo_config_dict, tmp_path, data={"eval_sets": []})
    no_eval = dataclasses.replace(curated_manifest, eval_paths=[], num_eval=0)
    no_eval.write(curated_manifest_path(validate_config(raw)))
    assert main(["train", write_config(raw, tmp_path / "c.yaml")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "data.eval_fraction" in err and "train.eval=false" in err
    assert not (tmp_path / "ray_results").exists()


def test_with_eval_off_a_run_trains_and_reports_no_eval_number(ray_train, demo_config_dict, curated_manifest,
                                                               tmp_path):
    cfg = validate_config(small_config(demo_config_dict, tmp_path, run_name="no-eval", data={"eval_sets": []},
                                       train={"eval": False, "export": "last", "max_steps": 2,
                                              "checkpoint_every": 1}))
    result = train(cfg, dataclasses.replace(curated_manifest, eval_paths=[], num_eval=0))
    assert result.metrics["step"] == 2 and not any(k.startswith("eval") for k in result.metrics)


def test_the_test_hooks_are_off_unless_explicitly_enabled(monkeypatch):
    monkeypatch.setenv(FAULT_KILL_ENV, "3")
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    assert read_test_hooks() == {}
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    assert read_test_hooks() == {"kill_at_step": 3, "spoil_at_step": None, "row_log_dir": None}
