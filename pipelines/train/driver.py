"""The train stage's driver: checks before any worker starts, the MLflow run, and the ``TorchTrainer``.

    raylora train configs/demo.yaml                          # reads <workdir>/curated/manifest.json
    raylora train configs/demo.yaml cluster.num_workers=2 train.deepspeed.stage=3 adapter.method=dora

``train(cfg, manifest) -> TrainResult`` checks its inputs, prepares the dataset (the curated rows tokenised
once, ``prepared.py``), opens an MLflow run, and runs a ``TorchTrainer`` whose workers run
``worker.train_loop_per_worker``. Metrics leave the workers only through
``ray.train.report`` (so Ray Tune can wrap ``train``); rank 0 also logs each step to MLflow.

A run is keyed by its name and fingerprint (``pipelines.fingerprint``: the result-shaping config and the
data hashes): ``<workdir>/train/<run_name>/<fingerprint>/`` and the MLflow run tagged with both. A rerun with
the same fingerprint resumes (Ray Train hands the workers the latest checkpoint: adapter weights, optimizer,
schedule, each rank's data position) or, when the run finished, reports it; a changed fingerprint is a new
run, and one line says what changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cluster.resources import check_resources, waiting_lines
from cluster.runtime_env import ensure_ray
from pipelines import tracking
from pipelines.artifacts import DatasetManifest, TrainResult
from pipelines.config import RayloraConfig
from pipelines.console import relay_worker_lines, worker_failure_lines
from pipelines.errors import ConfigError, Interrupted, StageError
from pipelines.fingerprint import Fingerprint, record_last_run, train_fingerprint
from pipelines.interrupts import in_a_thread
from pipelines.local_files import check_base_model, check_eval_sets
from pipelines.models import resolve_base_model
from pipelines.train.checkpoint import ADAPTER_DIR, latest_checkpoint_step
from pipelines.train.preflight import check_eval_rows_fit, check_inputs, check_something_to_evaluate
from pipelines.train.prepared import check_rows_fit, prepare_dataset
from pipelines.train.worker import train_loop_per_worker

# Test-only hooks, read only when TEST_HOOKS_ENV=1, which no user's run sets:
#   FAULT_KILL_ENV=N   the last rank SIGKILLs its own process at step N of a run that started from scratch
#   ROW_LOG_ENV=DIR    each rank appends the row ids of every step to DIR/rank<N>.jsonl
#   FAULT_SPOIL_ENV=N  after step N every rank's logits are multiplied by 1000: a run that is worse at its end than
#                      at an earlier eval by construction, not by hoping a learning rate diverges
TEST_HOOKS_ENV = "RAYLORA_TEST_HOOKS"
FAULT_KILL_ENV = "RAYLORA_FAULT_KILL_AT_STEP"
FAULT_SPOIL_ENV = "RAYLORA_FAULT_SPOIL_AT_STEP"
ROW_LOG_ENV = "RAYLORA_ROW_LOG_DIR"
TRAIN_RESULT_FILE = "train_result.json"


def read_test_hooks() -> dict[str, Any]:
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        return {}
    kill_at, spoil_at = os.environ.get(FAULT_KILL_ENV), os.environ.get(FAULT_SPOIL_ENV)
    return {"kill_at_step": int(kill_at) if kill_at else None, "spoil_at_step": int(spoil_at) if spoil_at else None,
            "row_log_dir": os.environ.get(ROW_LOG_ENV)}


def remember_run(cfg: RayloraConfig, fingerprint: Fingerprint) -> None:
    """Record the run as run_name's latest, saying what changed since the one before."""
    changed = record_last_run(cfg.path("train", cfg.run_name), fingerprint)
    if changed:
        print(f"raylora train: {cfg.run_name}: {changed}", flush=True)


def run_dir(cfg: RayloraConfig, fingerprint: Fingerprint) -> Path:
    return cfg.path("train", cfg.run_name, fingerprint.digest).resolve()


def read_eval_sets(paths: list[str]) -> dict[str, list[dict]]:
    """``data.eval_sets`` (JSONL, one ``{"messages": [...]}`` or plain ``{"text": "..."}`` per line) by name: the
    file stem, made unique."""
    sets: dict[str, list[dict]] = {}
    for path in paths:
        name = Path(path).stem
        name = name if name not in sets else f"{name}-{len(sets)}"
        rows = []
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            record = json.loads(line) if line.strip() else None
            if record is None:
                continue
            row_id = str(record.get("id", f"{name}:{number}")) if isinstance(record, dict) else ""
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                rows.append({"id": row_id, "text": record["text"]})
            elif isinstance(record, dict) and isinstance(record.get("messages"), list):
                rows.append({"id": row_id, "messages": record["messages"]})
            else:
                raise ConfigError(f"data.eval_sets: {path} line {number} has no 'messages' list and no 'text': write "
                                  'the eval set as JSONL of {"messages": [{"role", "content"}, ...]} or {"text": "..."}')
        sets[name] = rows
    return sets


def open_mlflow_run(cfg: RayloraConfig, manifest: DatasetManifest, fingerprint: Fingerprint,
                    parent_run_id: str | None = None) -> str:
    """The run's MLflow run: an unfinished one with the same run name and fingerprint is continued; a tune
    trial's run is nested under the search's run."""
    nested = {tracking.PARENT_RUN_TAG: parent_run_id} if parent_run_id else {}
    return tracking.open_run(
        cfg.tracking_uri, cfg.tracking.experiment, cfg.run_name, "train", fingerprint=fingerprint.digest,
        tags={"train_hash": manifest.train_hash, "eval_hash": manifest.eval_hash, "base_model": cfg.model.base,
              "base_revision": str(cfg.model.revision), "adapter_method": cfg.adapter.method, **nested},
        params={k: v for k, v in cfg.public_dump().items() if k not in ("tune", "register")})


def train(cfg: RayloraConfig, manifest: DatasetManifest, callbacks: list | None = None,
          parent_run_id: str | None = None) -> TrainResult:
    """Train the adapter on Ray Train + DeepSpeed; returns the TrainResult (also written as JSON).

    Called by ``raylora train`` and by Ray Tune trials; every metric also goes through ``ray.train.report``.
    ``callbacks`` go to ``RunConfig(callbacks=...)``: a Tune trial passes Ray's ``TuneReportCallback`` so the
    workers' reports reach the trial, and ``parent_run_id`` nests the trial's MLflow run under the search's."""
    check_base_model(cfg)
    if cfg.train.eval:
        check_eval_sets(cfg)
    base_path = resolve_base_model(cfg.model.base)
    check_inputs(cfg, manifest, base_path)
    check_something_to_evaluate(cfg, manifest)
    eval_sets = read_eval_sets(cfg.data.eval_sets) if cfg.train.eval else {}
    fingerprint = train_fingerprint(cfg, manifest.data_hashes)
    finished = run_dir(cfg, fingerprint) / TRAIN_RESULT_FILE
    if finished.is_file():
        remember_run(cfg, fingerprint)
        result = TrainResult.read(finished)
        print(f"raylora train: {cfg.run_name} ({fingerprint.digest}) already finished at step "
              f"{result.metrics.get('step', 0):.0f}; its adapter: {result.adapter_path}", flush=True)
        return result
    prepared_dir = prepare_dataset(cfg, manifest, base_path)  # tokenised once; every run and trial reads it
    check_rows_fit(cfg, prepared_dir)
    if cfg.train.eval:
        check_eval_rows_fit(cfg, manifest, eval_sets, base_path)
    ensure_ray(cfg)
    check_resources(cfg, "training")
    remember_run(cfg, fingerprint)  # after the checks: a run refused before it starts is no one's latest run
    relay_worker_lines()  # rank 0's progress lines reach this terminal
    mlflow_run_id = open_mlflow_run(cfg, manifest, fingerprint, parent_run_id)
    trainer = build_trainer(cfg, manifest, fingerprint, base_path, prepared_dir, eval_sets, mlflow_run_id,
                            [*(callbacks or []), worker_failure_lines(cfg.cluster.max_failures)])
    try:
        with waiting_lines():
            result = in_a_thread(trainer.fit, "raylora-train")
    except KeyboardInterrupt:
        tracking.kill_run(cfg.tracking_uri, mlflow_run_id)
        storage = ray_storage(cfg)
        step = latest_checkpoint_step(storage / ray_run_name(cfg, fingerprint)) if isinstance(storage, Path) else None
        where = f"its step-{step} checkpoint" if step is not None else "its latest checkpoint, if it made one"
        raise Interrupted(f"interrupted; rerun the same command to resume run {cfg.run_name} ({fingerprint.digest}) "
                          f"from {where}") from None
    except Exception as err:
        tracking.fail_run(cfg.tracking_uri, mlflow_run_id)
        # a worker's ConfigError ends the run unretried (console.worker_failure_lines): a usage error, exit 2
        if isinstance(failure := getattr(err, "controller_failure", None), ConfigError):
            raise ConfigError(str(failure)) from None
        raise StageError(f"training run {cfg.run_name} failed: {err}") from err
    return export_result(cfg, manifest, fingerprint, result, mlflow_run_id)


def ray_storage(cfg: RayloraConfig) -> Path | str:
    """Ray Train's storage: a URI (s3://, gs://) as given, a local path made absolute."""
    storage = cfg.cluster.storage_path or cfg.path("ray_results")
    return str(storage) if "://" in str(storage) else Path(storage).resolve()


def ray_run_name(cfg: RayloraConfig, fingerprint: Fingerprint) -> str:
    return f"{cfg.run_name}-{fingerprint.digest}"


def build_trainer(cfg: RayloraConfig, manifest: DatasetManifest, fingerprint: Fingerprint, base_path: str,
                  prepared_dir: Path, eval_sets: dict[str, list[dict]], mlflow_run_id: str,
                  callbacks: list | None) -> Any:
    """The ``TorchTrainer``: workers that read the prepared dataset, checkpoints kept by eval loss.

    No Ray Dataset: every worker memory-maps the prepared file and keeps its rows by id hash, a deterministic
    shard, so a resumed run skips exactly the batches it already trained on."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    worker_env = {"TOKENIZERS_PARALLELISM": "false"}
    if not cfg.cluster.use_gpu:
        worker_env["DS_ACCELERATOR"] = "cpu"
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.public_dump(),  # the job's env vars come through Ray, not through the workers' config
            "base_path": base_path,
            "prepared_dir": str(prepared_dir),
            "eval_paths": [str(Path(p).resolve()) for p in manifest.eval_paths] if cfg.train.eval else [],
            "eval_sets": eval_sets,
            "mlflow": {"tracking_uri": cfg.tracking_uri, "run_id": mlflow_run_id},
            "test_hooks": read_test_hooks(),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker,
                                  **({"GPU": cfg.cluster.gpus_per_worker} if cfg.cluster.use_gpu else {})},
            placement_strategy=cfg.cluster.placement_strategy,
        ),
        run_config=RunConfig(
            name=ray_run_name(cfg, fingerprint), storage_path=str(ray_storage(cfg)),
            failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
            # kept: the best by eval loss, or the latest when nothing is evaluated
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute="eval_loss" if cfg.train.eval else None, checkpoint_score_order="min"),
            worker_runtime_env={"env_vars": worker_env},
            callbacks=callbacks,
        ),
    )


def export_result(cfg: RayloraConfig, manifest: DatasetManifest, fingerprint: Fingerprint, result: Any,
                  mlflow_run_id: str) -> TrainResult:
    """Copy the exported checkpoint's adapter (``train.export``: best by eval loss, or last) into the run
    directory, close the MLflow run, write the TrainResult."""
    if result.checkpoint is None:
        raise StageError(f"training run {cfg.run_name} reported no checkpoint")
    exported = result.checkpoint
    if cfg.train.export == "best":
        exported = result.get_best_checkpoint(metric="eval_loss", mode="min") or result.checkpoint
    directory = run_dir(cfg, fingerprint)
    adapter_path = directory / ADAPTER_DIR
    with exported.as_directory() as ckpt_dir:
        if adapter_path.exists():
            shutil.rmtree(adapter_path)
        shutil.copytree(Path(ckpt_dir) / ADAPTER_DIR, adapter_path)
    # the tokenizer travels with the adapter: the chat template it was trained with, and any tokens it added
    from adapters.build import load_tokenizer

    load_tokenizer(cfg.model.model_copy(update={"base": resolve_base_model(cfg.model.base)})).save_pretrained(
        adapter_path)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    exported_metrics = next((m for c, m in result.best_checkpoints if c.path == exported.path), {})
    metrics.update({f"exported_{k}": float(v) for k, v in exported_metrics.items()
                    if k in ("step", "eval_loss") and isinstance(v, int | float)})
    tracking.finish_run(cfg.tracking_uri, mlflow_run_id, metrics=metrics, step=int(metrics.get("step", 0)),
                        artifacts={"adapter": adapter_path})
    train_result = TrainResult(
        run_name=cfg.run_name, adapter_path=str(adapter_path), base_model=cfg.model.base, metrics=metrics,
        checkpoint_path=exported.path, mlflow_run_id=mlflow_run_id, train_hash=manifest.train_hash,
        eval_hash=manifest.eval_hash, fingerprint=fingerprint.digest, config=cfg.public_dump(),
    )
    train_result.write(directory / TRAIN_RESULT_FILE)
    return train_result
