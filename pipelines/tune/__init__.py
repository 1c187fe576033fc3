"""The tune stage: a Ray Tune search whose trials are train runs.

    raylora tune configs/demo.yaml
"""

from pipelines.tune.stage import check_search, tune

__all__ = ["check_search", "tune"]
