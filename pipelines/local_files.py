"""The local files a config names, checked before any Ray work: a missing or wrong file is exit 2 with one line
naming the key and the fix, not a traceback from a reader (or a Ray worker) minutes later.

Remote URIs and hub ids are left to the stage that opens them: only the cluster or the hub can say.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipelines.config import TINY_MODEL, RayloraConfig
from pipelines.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def is_local(path: str) -> bool:
    return "://" not in path


def relative_hint(path: str) -> str:
    return "" if Path(path).is_absolute() else f" (relative to {Path.cwd()})"


def check_eval_sets(cfg: RayloraConfig) -> None:
    """Every local file of ``data.eval_sets`` exists and is a file."""
    for index, path in enumerate(cfg.data.eval_sets):
        if not is_local(path):
            continue
        if Path(path).is_dir():
            raise ConfigError(f"data.eval_sets[{index}]={path} is a directory: name the JSONL file itself")
        if not Path(path).is_file():
            raise ConfigError(f"data.eval_sets[{index}]={path} does not exist{relative_hint(path)}: fix the path, "
                              "or drop it from data.eval_sets")


def check_base_model(cfg: RayloraConfig) -> None:
    """``model.base``, when it is a local directory, holds a model's config.json and a tokenizer."""
    base = cfg.model.base
    if base == TINY_MODEL:
        return
    path = Path(base).expanduser()
    if not path.exists():
        if base.startswith(("/", ".", "~")):  # a path, not a hub id
            raise ConfigError(f"model.base={base} does not exist{relative_hint(base)}: point it at the model's "
                              "directory, or give a Hugging Face id")
        return
    if not path.is_dir():
        raise ConfigError(f"model.base={base} is a file: point it at the directory that holds the model")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.base={base} is a directory without a model's config.json: point it at a directory "
                          "that save_pretrained wrote, or give a Hugging Face id")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):  # training loads it from there
        raise ConfigError(f"model.base={base} holds no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}): save the "
                          "model's tokenizer there with tokenizer.save_pretrained")


def unwritable(directory: Path) -> str | None:
    """Why files cannot be written in ``directory`` (created when missing), or None when they can: tried, not
    guessed from permission bits (root passes those, and a read-only file system does not)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as err:
        return err.strerror or type(err).__name__


def check_workdir(cfg: RayloraConfig) -> None:
    """``workdir`` is a directory raylora can write in (made when missing)."""
    path = Path(cfg.workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"workdir={cfg.workdir} is a file: point workdir at a directory (made when missing)")
    if problem := unwritable(path):
        raise ConfigError(f"workdir={cfg.workdir} cannot be written ({problem}): point workdir at a directory you "
                          "can write")
