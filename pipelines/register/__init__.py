"""The register stage: the winning adapter as a version of an MLflow registered model, with its lineage,
promoted to ``champion`` only through the metric gate.

    raylora register configs/demo.yaml
    raylora promote configs/demo.yaml 3 --reason "..." [--force]
    raylora rollback configs/demo.yaml
"""

from pipelines.register.decisions import promote, rollback
from pipelines.register.stage import register

__all__ = ["promote", "register", "rollback"]
