"""Checks before any worker starts: every problem the driver can see fails here, with exit 2 or 1 naming the fix,
never as a Ray traceback from inside a worker.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.artifacts import DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError, StageError
from pipelines.train.engine import deepspeed_config


def check_inputs(cfg: RayloraConfig, manifest: DatasetManifest, base_path: str) -> None:
    """Fail before Ray starts workers: missing data files, a sequence length the model cannot hold, a bad
    DeepSpeed file. Each message names the fix."""
    missing = [p for p in [*manifest.train_paths, *manifest.eval_paths] if not Path(p).exists()]
    if missing:
        raise StageError(
            f"the dataset manifest points at {len(missing)} missing file(s), e.g. {missing[0]}: "
            "rerun `raylora curate CONFIG` to write them again"
        )
    if not manifest.train_paths:
        raise StageError("the dataset manifest has no train files: rerun `raylora curate CONFIG`")
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(base_path, revision=cfg.model.revision,
                                              trust_remote_code=cfg.model.trust_remote_code)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and cfg.model.max_seq_len > limit:
        raise ConfigError(
            f"model.max_seq_len={cfg.model.max_seq_len} is longer than the model supports "
            f"({limit} positions): set model.max_seq_len={limit} or less"
        )
    if cfg.train.deepspeed.config_file:
        deepspeed_config(cfg)  # reads and checks the file


def check_cpus_for_the_data_feed(cfg: RayloraConfig) -> None:
    """Ray Data's read tasks need a CPU beside the training workers, or the feed starves the step."""
    import ray

    workers_cpu = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker
    cluster_cpu = ray.cluster_resources().get("CPU", 0.0)
    if cluster_cpu - workers_cpu < 1.0:
        raise ConfigError(
            f"{cfg.cluster.num_workers} worker(s) x {cfg.cluster.cpus_per_worker} CPU leave no CPU for the Ray Data "
            f"feed on this {cluster_cpu:g}-CPU cluster: set cluster.cpus_per_worker="
            f"{max(cluster_cpu - 1.0, 0.0) / cfg.cluster.num_workers:g} or fewer cluster.num_workers"
        )
