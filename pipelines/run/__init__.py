"""The whole pipeline as one job: curate, then search (or train once), then register.

    raylora run configs/demo.yaml
"""

from pipelines.run.pipeline import RUN_SUMMARY_FILE, RunSummary, run_pipeline

__all__ = ["RUN_SUMMARY_FILE", "RunSummary", "run_pipeline"]
