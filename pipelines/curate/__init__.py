"""The curate stage: instruction data of any shape -> clean train / eval Parquet and a manifest.

    raylora curate configs/demo.yaml

stage.py runs the phases; readers.py reads the sources and formats.py turns each record into a canonical
row; filters.py, decontaminate.py, dedup.py and select.py decide which rows to drop, each under a reason
of reasons.py; split.py cuts the kept rows into train and eval; raydata.py holds the Ray Data and Parquet
helpers.
"""

from pipelines.curate.split import OUTPUT_SCHEMA
from pipelines.curate.stage import curate

__all__ = ["OUTPUT_SCHEMA", "curate"]
