"""Merge a saved adapter into its base and save a plain Hugging Face model, with a logit check.

    from adapters.merge import merge_adapter
    report = merge_adapter(cfg.model, cfg.adapter, "out/adapter", "out/merged")   # cfg.model.base: a path or id
    report.max_logit_diff    # merged vs unmerged, on a probe batch

A LoRA / DoRA adapter on a full-precision base merges into that base. An adapter trained on a 4-bit base
(QLoRA, QDoRA) learned to correct the *quantised* weights, so it merges into the dequantised base
deq(Q(W)) + delta, never into the original W (whose difference from deq(Q(W)) the adapter never saw), and
not back into 4 bits (re-quantising the sum would throw most of the small delta away).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapters.build import DTYPES, load_base, load_tokenizer
from adapters.io import check_adapter_dir, load_adapter
from pipelines.config import AdapterConfig, ModelConfig

PROBE_TEXTS = (
    "What is 3 + 4?",
    "The capital of France is",
    "Write one sentence about the sea.",
    "def add(a, b):\n    return",
)
MERGE_REPORT = "merge_report.json"


@dataclass(frozen=True)
class MergeReport:
    merged_dir: str
    adapter_dir: str
    dequantized_base: bool
    probe_tokens: int
    max_logit_diff: float  # max |merged - unmerged| over the probe batch's logits
    max_abs_logit: float  # the scale the difference is measured against

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def probe_batch(tokenizer, texts: tuple[str, ...] | list[str] = PROBE_TEXTS) -> dict[str, torch.Tensor]:
    """A padded batch of probe texts; ``tokenizer`` comes from ``adapters.build.load_tokenizer`` (it pads)."""
    return tokenizer(list(texts), return_tensors="pt", padding=True)


@torch.no_grad()
def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    out = model(**batch).logits.float()
    return out[batch["attention_mask"].bool()]  # padded positions are not compared


def merge_adapter(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, adapter_dir: str | Path,
                  out_dir: str | Path, probe_texts: tuple[str, ...] | list[str] = PROBE_TEXTS) -> MergeReport:
    """Merge ``adapter_dir`` into ``model_cfg.base``, save model + tokenizer to ``out_dir``, report the logit diff."""
    adapter_dir, out = check_adapter_dir(adapter_dir), Path(out_dir)
    tokenizer = load_tokenizer(model_cfg)
    batch = probe_batch(tokenizer, probe_texts)
    unmerged = load_adapter(load_base(model_cfg, adapter_cfg), adapter_dir)
    reference = _logits(unmerged, batch)
    if adapter_cfg.is_quantized:
        # PEFT's merge on a 4-bit layer re-quantises the sum; dequantise the base first instead. Loaded
        # anew so that only one copy of the model is in memory at a time.
        del unmerged
        base = load_base(model_cfg, adapter_cfg)
        base.dequantize()
        unmerged = load_adapter(base.to(DTYPES[model_cfg.dtype]), adapter_dir)
    merged = unmerged.merge_and_unload()
    merged.config.use_cache = True  # training switched the cache off; whoever serves the merged model wants it
    merged_logits = _logits(merged, batch)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report = MergeReport(
        merged_dir=str(out), adapter_dir=str(adapter_dir), dequantized_base=adapter_cfg.is_quantized,
        probe_tokens=int(batch["attention_mask"].sum()),
        max_logit_diff=float((merged_logits - reference).abs().max()),
        max_abs_logit=float(reference.abs().max()),
    )
    (out / MERGE_REPORT).write_text(report.to_json())
    return report
