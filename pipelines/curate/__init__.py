"""The curate stage: instruction data of any shape -> clean train / eval Parquet and a manifest.

    raylora curate configs/demo.yaml

stage.py runs the phases; formats.py reads the sources, filters.py, decontaminate.py, dedup.py and
select.py decide which rows to drop, each under a reason of reasons.py; raydata.py holds the Ray Data and
Parquet helpers.
"""

from pipelines.curate.stage import OUTPUT_SCHEMA, curate

__all__ = ["OUTPUT_SCHEMA", "curate"]
