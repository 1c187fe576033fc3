"""How a raylora process joins Ray: the one place that calls ``ray.init``."""

from __future__ import annotations

from pipelines.config import RayloraConfig


def ensure_ray(cfg: RayloraConfig, log_to_driver: bool) -> None:
    """Start Ray locally, or join ``cluster.address`` with ``cluster.runtime_env``, unless the caller already did.

    ``log_to_driver`` is False for stages whose workers only produce noise (curation) and True where rank 0
    prints progress lines (training).
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.cluster.address, runtime_env=cfg.cluster.runtime_env or None,
                 include_dashboard=False, log_to_driver=log_to_driver, configure_logging=False)
