"""What curation reads, hashed: a rerun on the same inputs reuses the output instead of pretending to redo it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipelines.artifacts import MANIFEST_FILE, DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.curate.readers import HF_PREFIX, expand_source
from pipelines.fingerprint import Fingerprint, curate_fingerprint

READ_BYTES = 1 << 20


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


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
