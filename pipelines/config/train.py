"""The training section (``train``) and its DeepSpeed ZeRO settings (``train.deepspeed``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config.base import Section


class DeepSpeedConfig(Section):
    stage: Literal[0, 1, 2, 3] = Field(
        2, description="ZeRO stage: 0 none, 1 shards optimizer state, 2 also gradients, 3 also parameters")
    offload_optimizer: bool = Field(
        False, description="keep optimizer state in CPU memory (ZeRO-Offload); needs stage 1, 2 or 3")
    offload_params: bool = Field(
        False, description="keep parameters in CPU memory between uses; needs stage 3")
    config_file: str | None = Field(
        None,
        description="a DeepSpeed JSON to start from; batch sizes, clipping, precision, ZeRO are filled in")


class TrainConfig(Section):
    num_epochs: int = Field(1, ge=1, description="passes over the train split; ignored when max_steps is set")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps to train; wins over num_epochs, null trains num_epochs")
    micro_batch_size: int = Field(
        8, ge=1, description="blocks of model.max_seq_len tokens per worker per forward; also the eval batch")
    grad_accum: int = Field(
        1, ge=1, description="micro-batches per optimizer step; global batch = micro x grad_accum x workers")
    lr: float = Field(
        2e-4, gt=0.0, description="peak learning rate: reached after warmup, then decayed by train.scheduler")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd with train.momentum")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum; adamw ignores it")
    weight_decay: float = Field(
        0.0, ge=0.0, description="weight decay on the trainable parameters (decoupled for adamw, L2 for sgd)")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="learning rate after warmup: cosine to 0, linear to 0, or constant")
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="fraction of the total steps (rounded up) of linear warmup to lr")
    max_grad_norm: float | None = Field(
        1.0, gt=0.0, description="clip the gradient norm to this; null is no clipping")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="training precision: fp32, bf16 mixed, or fp16 mixed with loss scaling (GPU only)")
    deepspeed: DeepSpeedConfig = Field(
        default_factory=DeepSpeedConfig, description="DeepSpeed ZeRO sharding and CPU offload")
    packing: bool = Field(
        True, description="pack several examples into each block (no attention across them); false pads each")
    train_on_responses_only: bool = Field(
        True, description="loss on assistant tokens only; false also trains on system and user tokens")
    log_every: int = Field(10, ge=1, description="steps between progress lines and reported train metrics")
    eval_every: int = Field(
        50, ge=1, description="steps between evals; every checkpoint and the last step evaluate too")
    eval_max_new_tokens: int = Field(16, ge=1, description="tokens generated per row for eval exact match")
    eval_generate_limit: int | None = Field(
        64, ge=1, description="first eval rows scored by greedy exact match; null scores every row")
    checkpoint_every: int = Field(
        50, ge=1,
        description="steps between checkpoints (adapter, optimizer, data position); reruns resume there")
    keep_checkpoints: int = Field(
        2, ge=1, description="checkpoints kept on disk: the best by eval_loss (the latest when train.eval=false), "
                    "and always the latest, which a rerun resumes from")
    eval: bool = Field(
        True, description="evaluate during training; false needs no eval rows and ranks checkpoints by recency")
    export: Literal["best", "last"] = Field(
        "best", description="the adapter the run hands on: the best checkpoint by eval_loss, or the last one")
    seed: int = Field(0, description="seed of the adapter's initial weights and the train data shuffle")
