"""The demo's own world: synthetic instruction data with planted defects, and the offline tiny base model.

    raylora demo-assets configs/demo.yaml
"""

from pipelines.demo.assets import build_demo_assets, needs_demo_assets, tiny_model_path

__all__ = ["build_demo_assets", "needs_demo_assets", "tiny_model_path"]
