"""Honest runs on real Ray Train + DeepSpeed: a changed config is a new run, a failed run resumes and a finished
one is reported, the best adapter is exported, there is always something to evaluate (or eval is off).

    .venv/bin/python -m pytest tests/integration/test_honest_runs.py -q
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.artifacts import DatasetManifest, curated_manifest_path
from pipelines.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from pipelines.config import validate_config
from pipelines.train import train
from pipelines.train.driver import (
    FAULT_KILL_ENV,
    FAULT_SPOIL_ENV,
    TEST_HOOKS_ENV,
    read_test_hooks,
)

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


def test_a_changed_config_is_a_new_run_a_failed_one_resumes_and_a_finished_one_is_reported(
        ray_train, demo_config_dict, curated_by_stage, tmp_path, capsys, monkeypatch):
    """Through the CLI, on what the curate stage wrote. Changed keys (lr, rank, evaluation off) make a new run:
    one line names the changes, the old run is kept, the new rank never meets the old run's checkpoints. That
    run dies whole (no retries left) after its step-2 checkpoint; the same command resumes it there, on the same
    MLflow run and the dataset prepared the first time, and with eval off it reports no eval number. The same
    command once more reports the finished run: nothing trains."""
    curated_workdir = curated_by_stage.workdir
    config = write_config(small_config(demo_config_dict, curated_workdir), tmp_path / "run.yaml")
    cfg = validate_config(yaml.safe_load(Path(config).read_text()))
    manifest = DatasetManifest.read(curated_manifest_path(cfg))
    assert main(["train", config]) == EXIT_OK
    first = json.loads(next((curated_workdir / "train" / "demo").glob("*/train_result.json")).read_text())
    assert first["train_hash"] == manifest.train_hash and first["eval_hash"] == manifest.eval_hash
    printed = capsys.readouterr().out

    changed = ["train.lr=1e-4", "adapter.r=16", "train.eval=false", "train.export=last", "train.checkpoint_every=2",
               "cluster.max_failures=0"]
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    monkeypatch.setenv(FAULT_KILL_ENV, "3")  # the last rank dies at step 3, after the step-2 checkpoint
    assert main(["train", config, *changed]) == EXIT_FAILURE
    out, err = capsys.readouterr()
    line = next(line for line in out.splitlines() if "config changed since run" in line)
    assert f"config changed since run {first['fingerprint']} (" in line
    assert "train.lr: 0.003 -> 0.0001" in line and "adapter.r: 8 -> 16" in line and "train.eval: True -> False" in line
    assert "raylora train failed: training run demo failed" in err, err
    monkeypatch.delenv(FAULT_KILL_ENV)

    assert main(["train", config, *changed]) == EXIT_OK
    printed += out + capsys.readouterr().out
    results = {p.parent.name: json.loads(p.read_text())
               for p in (curated_workdir / "train" / "demo").glob("*/train_result.json")}
    assert len(results) == 2 and first["fingerprint"] in results, "the old run is kept"
    second = next(r for name, r in results.items() if name != first["fingerprint"])
    assert second["metrics"]["resumed_from_step"] == 2 and second["metrics"]["step"] == 4
    assert not any(key.startswith("eval") for key in second["metrics"]), second["metrics"]
    assert adapter_bytes(second["adapter_path"]) != adapter_bytes(first["adapter_path"])
    assert second["config"]["train"]["lr"] == 1e-4 and second["config"]["adapter"]["r"] == 16
    assert second["mlflow_run_id"] != first["mlflow_run_id"]
    client = MlflowClient(cfg.tracking_uri)
    params = client.get_run(second["mlflow_run_id"]).data.params
    assert (params["train.lr"], params["adapter.r"]) == ("0.0001", "16")
    steps = sorted(m.step for m in client.get_metric_history(second["mlflow_run_id"], "train_loss"))
    assert steps == [1, 2, 3, 4], "the rerun continued the same MLflow run from step 3"
    assert sum("raylora train: prepared" in line for line in printed.splitlines()) <= 1, "tokenised once"

    assert main(["train", config, *changed]) == EXIT_OK
    assert "already finished at step 4" in capsys.readouterr().out


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


def test_the_test_hooks_are_off_unless_explicitly_enabled(monkeypatch):
    monkeypatch.setenv(FAULT_KILL_ENV, "3")
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    assert read_test_hooks() == {}
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    assert read_test_hooks() == {"kill_at_step": 3, "spoil_at_step": None, "row_log_dir": None}
