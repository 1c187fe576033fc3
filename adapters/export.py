"""Export a trained adapter for other servers, with the tokenizer and chat template it was trained with.

    from adapters.export import export_adapter, export_merged
    export_merged(model_cfg, adapter_cfg, "run/adapter", "out/merged")          # cfg.model.base: a path or id
    export_adapter("run/adapter", "out/adapter", base_model=model_cfg.base)

``export_merged`` writes a plain transformers model in safetensors, which ``AutoModelForCausalLM.from_pretrained``
loads without PEFT (vLLM, TGI, llama.cpp's convert_hf_to_gguf.py): the adapter merged into its base by
``adapters.merge`` (a 4-bit base dequantised first) and checked against the unmerged model on a probe batch.
``export_adapter`` copies the PEFT files (vLLM ``--lora-modules``, TGI ``LORA_ADAPTERS``, llama.cpp's
convert_lora_to_gguf.py), which need their base beside them. ``export_full_model`` copies a full fine-tuned
model (``adapter.method: full``), which is already what a merged export is. Each export records itself in
``export.json``.

The output directory must be new or empty; ``force`` replaces an earlier export (a directory holding only the
files its export.json lists), never a directory holding anything else, so nothing but an export's own files is
deleted. The export is written beside it first and moved into place once complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.io import check_adapter_dir, is_full_model_dir
from adapters.merge import MERGE_REPORT, merge_adapter
from pipelines.config import AdapterConfig, ModelConfig
from pipelines.errors import ConfigError
from pipelines.local_files import unwritable

EXPORT_FILE = "export.json"


@dataclass(frozen=True)
class ExportReport:
    kind: str  # "merged" or "adapter"
    out_dir: str
    source: str  # where the adapter came from, as the caller names it
    base_model: str  # the base it was trained on (a merged export contains it)
    files: list[str]  # what the export wrote, export.json aside
    merge: dict[str, Any] | None = None  # a merged export's logit check: merged vs unmerged on a probe batch


def earlier_export_files(out: Path) -> set[str]:
    """The files an earlier export wrote to ``out`` (its export.json and what that lists); empty when none did."""
    try:
        return {EXPORT_FILE, *json.loads((out / EXPORT_FILE).read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_export_dir(out: Path, force: bool) -> None:
    """Fail, before any work, unless ``out`` is new, empty, or (with ``force``) an earlier export and nothing else."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} is a file or a link: export to a directory")
    entries = sorted(entry.name for entry in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        raise ConfigError(f"{out} is not empty: export to a new directory, or pass --force to replace an earlier "
                          "export there")
    foreign = [name for name in entries if name not in earlier_export_files(out)]
    if foreign:
        raise ConfigError(f"{out} holds files no export wrote ({', '.join(foreign[:3])}), and --force replaces only "
                          "an earlier export: export to a new directory")
    if problem := unwritable(out.parent):  # the export is staged beside out, then moved into place
        raise ConfigError(f"{out.parent} cannot be written ({problem}): export to a directory you can write")


def write_export(out: str | Path, write: Callable[[Path], dict[str, Any] | None], *, kind: str, source: str,
                 base_model: str, force: bool) -> ExportReport:
    """``write`` the export into a staging directory beside ``out``, record it, then move it into place."""
    out = Path(out)
    check_export_dir(out, force)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an export that was killed
    staging.mkdir(parents=True)
    try:
        merge = write(staging)
        report = ExportReport(kind=kind, out_dir=str(out), source=source, base_model=base_model,
                              files=sorted(entry.name for entry in staging.iterdir()), merge=merge)
        (staging / EXPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # empty, or only an earlier export's files: check_export_dir said so
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def export_merged(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, adapter_dir: str | Path, out: str | Path, *,
                  force: bool = False, source: str = "") -> ExportReport:
    """The adapter merged into ``model_cfg.base`` (a path or hub id; dequantised first when ``adapter_cfg`` trained
    it 4-bit), saved in safetensors with the tokenizer and chat template, in ``out``."""
    adapter_dir = check_adapter_dir(adapter_dir)

    def merge(staging: Path) -> dict[str, Any]:
        report = merge_adapter(model_cfg, adapter_cfg, adapter_dir, staging)
        # its paths name the staging and source directories, which do not last: the numbers go to export.json
        (staging / MERGE_REPORT).unlink()
        return {key: value for key, value in asdict(report).items() if key not in ("merged_dir", "adapter_dir")}

    return write_export(out, merge, kind="merged", source=source, base_model=model_cfg.base, force=force)


def export_full_model(model_dir: str | Path, out: str | Path, *, base_model: str, force: bool = False,
                      source: str = "") -> ExportReport:
    """A full fine-tuned model (``adapter.method: full``) is already a plain transformers model: its files (model,
    tokenizer, chat template) are copied to ``out`` as a merged export, with nothing to merge or check."""
    model_dir = Path(model_dir)
    if not is_full_model_dir(model_dir):
        raise ConfigError(f"{model_dir} is not a full fine-tuned model (no config.json, or an adapter_config.json): "
                          "export an adapter with export_merged or export_adapter")

    def copy(staging: Path) -> None:
        for entry in model_dir.iterdir():
            if entry.is_file():
                shutil.copy2(entry, staging / entry.name)

    return write_export(out, copy, kind="merged", source=source, base_model=base_model, force=force)


def export_adapter(adapter_dir: str | Path, out: str | Path, *, base_model: str, force: bool = False,
                   source: str = "") -> ExportReport:
    """The adapter's PEFT files and its tokenizer (the chat template), copied to ``out``."""
    adapter_dir = check_adapter_dir(adapter_dir)

    def copy(staging: Path) -> None:
        for entry in adapter_dir.iterdir():
            if entry.is_file():
                shutil.copy2(entry, staging / entry.name)

    return write_export(out, copy, kind="adapter", source=source, base_model=base_model, force=force)
