"""The train stage's driver: checks before any worker starts, the MLflow run, and the ``TorchTrainer``.

    raylora train configs/demo.yaml                          # reads <workdir>/curated/manifest.json
    raylora train configs/demo.yaml cluster.num_workers=2 train.deepspeed.stage=3 adapter.method=dora

``train(cfg, manifest) -> TrainResult`` checks its inputs, opens an MLflow run, and runs a ``TorchTrainer``
whose workers run ``worker.train_loop_per_worker``. Metrics leave the workers only through
``ray.train.report`` (so Ray Tune can wrap ``train``); rank 0 also logs each step to MLflow.

A rerun with the same ``run_name`` resumes: Ray Train finds the run's snapshot under the storage path and
hands the workers its latest checkpoint (adapter weights, optimizer, schedule, step and data position).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cluster.runtime_env import ensure_ray
from pipelines import tracking
from pipelines.artifacts import DatasetManifest, TrainResult
from pipelines.config import RayloraConfig
from pipelines.errors import StageError
from pipelines.models import resolve_base_model
from pipelines.train.checkpoint import ADAPTER_DIR
from pipelines.train.preflight import check_cpus_for_the_data_feed, check_inputs
from pipelines.train.worker import train_loop_per_worker

# Test-only fault injection: the last rank SIGKILLs its own process at this optimizer step, on a run that
# started from scratch (a resumed run never kills itself again). Read by the driver, passed to the workers.
FAULT_KILL_ENV = "RAYLORA_FAULT_KILL_AT_STEP"


def open_mlflow_run(cfg: RayloraConfig, manifest: DatasetManifest) -> str:
    """The run's MLflow run: an unfinished one with the same run name is continued (a resumed run)."""
    return tracking.open_run(
        cfg.tracking_uri, cfg.tracking.experiment, cfg.run_name, "train",
        tags={"dataset_hash": manifest.content_hash, "base_model": cfg.model.base,
              "adapter_method": cfg.adapter.method},
        params={k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("tune", "register")})


def train(cfg: RayloraConfig, manifest: DatasetManifest, callbacks: list | None = None) -> TrainResult:
    """Train the adapter on Ray Train + DeepSpeed; returns the TrainResult (also written as JSON).

    Called by ``raylora train`` and by Ray Tune trials; every metric also goes through ``ray.train.report``.
    ``callbacks`` go to ``RunConfig(callbacks=...)``: a Tune trial passes Ray's ``TuneReportCallback`` so the
    workers' reports reach the trial."""
    base_path = resolve_base_model(cfg.model.base)
    check_inputs(cfg, manifest, base_path)
    ensure_ray(cfg, log_to_driver=True)
    check_cpus_for_the_data_feed(cfg)
    mlflow_run_id = open_mlflow_run(cfg, manifest)
    trainer = build_trainer(cfg, manifest, base_path, mlflow_run_id, callbacks)
    try:
        result = trainer.fit()
    except Exception as err:
        tracking.fail_run(cfg.tracking_uri, mlflow_run_id)
        raise StageError(f"training run {cfg.run_name} failed: {err}") from err
    return export_result(cfg, manifest, result, mlflow_run_id)


def build_trainer(cfg: RayloraConfig, manifest: DatasetManifest, base_path: str, mlflow_run_id: str,
                  callbacks: list | None) -> Any:
    """The ``TorchTrainer``: workers, the train data as a Ray Dataset, checkpoints kept by eval loss."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = Path(cfg.cluster.storage_path or cfg.path("ray_results")).resolve()
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True  # a resumed run must see the rows in the same order
    data_context.enable_progress_bars = False
    train_data = ray.data.read_parquet(manifest.train_paths, columns=["id", "messages"])

    worker_env = {"TOKENIZERS_PARALLELISM": "false"}
    if not cfg.cluster.use_gpu:
        worker_env["DS_ACCELERATOR"] = "cpu"
    fault_kill = os.environ.get(FAULT_KILL_ENV)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "base_path": base_path,
            "eval_paths": [str(Path(p).resolve()) for p in manifest.eval_paths],
            "mlflow": {"tracking_uri": cfg.tracking_uri, "run_id": mlflow_run_id},
            "fault_kill_at_step": int(fault_kill) if fault_kill else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker,
                                  **({"GPU": cfg.cluster.gpus_per_worker} if cfg.cluster.use_gpu else {})},
            placement_strategy=cfg.cluster.placement_strategy,
        ),
        # every worker reads the whole stream and keeps its rows by id hash: a deterministic shard, so a
        # resumed run skips exactly the batches it already trained on
        dataset_config=DataConfig(datasets_to_split=[]),
        datasets={"train": train_data},
        run_config=RunConfig(
            name=cfg.run_name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute="eval_loss", checkpoint_score_order="min"),
            worker_runtime_env={"env_vars": worker_env},
            callbacks=callbacks,
        ),
    )


def export_result(cfg: RayloraConfig, manifest: DatasetManifest, result: Any, mlflow_run_id: str) -> TrainResult:
    """Copy the final checkpoint's adapter into the run directory, close the MLflow run, write the TrainResult."""
    if result.checkpoint is None:
        raise StageError(f"training run {cfg.run_name} reported no checkpoint")
    run_dir = cfg.path("train", cfg.run_name).resolve()
    adapter_path = run_dir / ADAPTER_DIR
    with result.checkpoint.as_directory() as ckpt_dir:
        if adapter_path.exists():
            shutil.rmtree(adapter_path)
        shutil.copytree(Path(ckpt_dir) / ADAPTER_DIR, adapter_path)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    best = result.get_best_checkpoint(metric="eval_loss", mode="min") or result.checkpoint
    tracking.finish_run(cfg.tracking_uri, mlflow_run_id, metrics=metrics, step=int(metrics.get("step", 0)),
                        artifacts={"adapter": adapter_path})
    train_result = TrainResult(
        run_name=cfg.run_name, adapter_path=str(adapter_path), base_model=cfg.model.base, metrics=metrics,
        checkpoint_path=best.path, mlflow_run_id=mlflow_run_id, dataset_hash=manifest.content_hash,
        config=cfg.model_dump(mode="json"),
    )
    train_result.write(run_dir / "train_result.json")
    return train_result
