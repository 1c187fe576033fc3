"""The curate stage: instruction data of any shape -> clean train / eval Parquet and a manifest.

    raylora curate configs/demo.yaml
"""

from pipelines.curate.stage import OUTPUT_SCHEMA, curate

__all__ = ["OUTPUT_SCHEMA", "curate"]
