"""The one typed configuration of the whole pipeline.

Loaded once from YAML with ``a.b.c=value`` overrides (the Axolotl / torchtune habit):

    raylora train configs/demo.yaml adapter.r=16 train.lr=1e-4
    raylora config configs/demo.yaml --explain    # every key: value, default, description

Every model forbids unknown keys and describes each key where it is declared; cross-field rules live in
validators, so a bad config fails here, before any Ray work starts, with a message that names the key and
the fix. Only plain dicts cross Ray boundaries: ``cfg.model_dump()`` out, ``RayloraConfig.model_validate`` in.

Sections by concern: ``model`` and ``adapter`` in ``model.py``, ``data`` and ``curate`` in ``data.py``,
``train`` in ``train.py``, ``tune`` / ``register`` / ``tracking`` / ``cluster`` in ``runs.py``, the root in
``root.py``; reading and writing YAML in ``loading.py``, the ``--explain`` table in ``explain.py``.
"""

from pipelines.config.base import Section
from pipelines.config.data import CurateConfig, DataConfig, DataSource
from pipelines.config.explain import explain_config
from pipelines.config.loading import (
    apply_overrides,
    dump_config,
    format_validation_error,
    load_config,
    parse_override,
    validate_config,
)
from pipelines.config.model import TINY_MODEL, AdapterConfig, ModelConfig, QuantConfig
from pipelines.config.root import RayloraConfig
from pipelines.config.runs import ClusterConfig, RegisterConfig, TrackingConfig, TuneConfig
from pipelines.config.train import DeepSpeedConfig, TrainConfig

__all__ = [
    "TINY_MODEL",
    "AdapterConfig",
    "ClusterConfig",
    "CurateConfig",
    "DataConfig",
    "DataSource",
    "DeepSpeedConfig",
    "ModelConfig",
    "QuantConfig",
    "RayloraConfig",
    "RegisterConfig",
    "Section",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "dump_config",
    "explain_config",
    "format_validation_error",
    "load_config",
    "parse_override",
    "validate_config",
]
