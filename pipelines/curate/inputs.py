"""What curation reads, hashed: a rerun on the same inputs reuses the output instead of pretending to redo it."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path, PurePosixPath

from pipelines.artifacts import MANIFEST_FILE, DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.curate.readers import FILE_EXTENSIONS, HF_PREFIX, expand_source
from pipelines.errors import ConfigError
from pipelines.fingerprint import Fingerprint, curate_fingerprint
from pipelines.local_files import check_base_model, check_eval_sets, is_local, relative_hint

READ_BYTES = 1 << 20


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def check_local_inputs(cfg: RayloraConfig) -> None:
    """Before any Ray work: every local source names files of a type curation reads, every eval set exists,
    and a local model.base holds a model and its tokenizer (curation counts tokens with it)."""
    for index, source in enumerate(cfg.data.sources):
        path, key = source.path, f"data.sources[{index}].path"
        if not is_local(path):
            continue
        if any(char in path for char in "*?["):
            files = sorted(p for p in glob.glob(path, recursive=True) if Path(p).is_file())
            if not files:
                raise ConfigError(f"{key}={path} matches no file{relative_hint(path)}: fix the pattern")
        elif Path(path).is_dir():
            raise ConfigError(f"{key}={path} is a directory: name its files with a glob, e.g. {path.rstrip('/')}/*.jsonl")
        elif not Path(path).is_file():
            raise ConfigError(f"{key}={path} does not exist{relative_hint(path)}: fix the path")
        else:
            files = [path]
        for file in files:
            suffix = PurePosixPath(file).suffix.lower()
            if suffix not in FILE_EXTENSIONS:
                fix = f"decompress it first (e.g. gunzip -k {file})" if suffix in (".gz", ".bz2", ".xz", ".zst") \
                    else "convert it to one of those"
                raise ConfigError(f"{key}: {file} is not a file type curation reads ({', '.join(FILE_EXTENSIONS)}): "
                                  f"{fix}")
    check_eval_sets(cfg)
    check_base_model(cfg)


def input_fingerprint(cfg: RayloraConfig) -> tuple[Fingerprint | None, str]:
    """The fingerprint of this curation's inputs, or None with the reason when one cannot be hashed (a remote
    URI or a hub dataset can change behind the same name, so its output is never reused)."""
    digests = {}
    for path in [source.path for source in cfg.data.sources] + list(cfg.data.eval_sets):
        if path.startswith(HF_PREFIX):
            return None, f"{path} is a hub dataset"
        for file in expand_source(path):
            if "://" in file:
                return None, f"{file} is remote"
            digests[file] = file_digest(file)
    return curate_fingerprint(cfg, digests), ""


def finished_output(out: Path, fingerprint: Fingerprint | None) -> DatasetManifest | None:
    """The manifest in ``out`` when it was written from the inputs ``fingerprint`` hashes."""
    path = out / MANIFEST_FILE
    if fingerprint is None or not path.is_file():
        return None
    manifest = DatasetManifest.read(path)
    return manifest if manifest.fingerprint == fingerprint.digest else None
