"""The train stage: adapters on a frozen base, trained on Ray Train with DeepSpeed ZeRO.

    raylora train configs/demo.yaml
"""

from pipelines.train.driver import train

__all__ = ["train"]
