"""How a raylora process joins Ray: the one place that calls ``ray.init``."""

from __future__ import annotations

from pipelines.config import RayloraConfig


def ensure_ray(cfg: RayloraConfig) -> None:
    """Start Ray locally, or join ``cluster.address`` with ``cluster.runtime_env``, unless the caller already did.

    Workers' output never goes to the terminal (``log_to_driver=False``): Ray Data tasks and Ray's own
    actors only produce noise there, and it stays in Ray's log files. What a user should see from a worker
    (rank 0's progress) reaches the terminal through ``pipelines.console.say``.
    """
    import os

    import ray

    # null starts Ray here even when another cluster runs on this machine (ray.init() would join the one
    # `ray start` last recorded); a Ray job's driver is told its cluster through RAY_ADDRESS
    address = cfg.cluster.address or (None if os.environ.get("RAY_ADDRESS") else "local")
    if not ray.is_initialized():
        ray.init(address=address, runtime_env=cfg.cluster.runtime_env or None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
