"""The train stage: adapters on a frozen base, trained on Ray Train with DeepSpeed ZeRO.

    raylora train configs/demo.yaml
"""

from __future__ import annotations

from pathlib import Path

from pipelines.config import RayloraConfig
from pipelines.train.driver import TRAIN_RESULT_FILE, train

__all__ = ["TRAIN_RESULT_FILE", "evaluate_adapter", "train"]


def evaluate_adapter(cfg: RayloraConfig, adapter_path: str | Path, eval_set_path: str | Path) -> dict[str, float]:
    """Loss, perplexity and exact match of a saved adapter (or full fine-tuned model, ``adapter.method: full``) on
    one eval set file (``data.eval_sets`` JSONL), in
    this process, as training evaluates it: the base from ``cfg.model`` (4-bit as ``cfg.adapter`` says), the
    tokenizer and chat template saved with the adapter, the eval settings of ``cfg.train``. The register
    stage's gate measures challenger and champion with it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.build import DTYPES, load_base
    from adapters.io import load_adapter
    from pipelines.models import resolve_base_model
    from pipelines.train.driver import read_eval_sets
    from pipelines.train.evaluate import evaluate

    (rows,) = read_eval_sets([str(eval_set_path)]).values()
    if cfg.adapter.is_full:  # the directory holds the whole fine-tuned model, no base beneath it
        model = AutoModelForCausalLM.from_pretrained(str(adapter_path), dtype=DTYPES[cfg.model.dtype],
                                                     trust_remote_code=cfg.model.trust_remote_code)
    else:
        base = load_base(cfg.model.model_copy(update={"base": resolve_base_model(cfg.model.base)}), cfg.adapter)
        model = load_adapter(base, adapter_path)
    t = cfg.train
    return evaluate(model, AutoTokenizer.from_pretrained(str(adapter_path)), rows, seq_len=cfg.model.max_seq_len,
                    batch_size=t.micro_batch_size, max_new_tokens=t.eval_max_new_tokens,
                    generate_limit=t.eval_generate_limit, responses_only=t.train_on_responses_only)
