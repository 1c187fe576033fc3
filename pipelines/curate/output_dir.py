"""Curation's output directory: replaced whole, only when a run succeeded, and never outside the workdir."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from pipelines.artifacts import MANIFEST_FILE, DatasetManifest
from pipelines.errors import StageError

OUTPUT_ENTRIES = {"train", "eval", "dropped", "_work", MANIFEST_FILE}  # all that a curation output holds


def check_replaceable(out: Path) -> None:
    """Fail, before any work, when ``out`` holds anything a curation did not write (curation replaces it)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise StageError(f"curate.output_dir {out} is a file or a link, and curation replaces its output whole: "
                         "point curate.output_dir at a new directory")
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in OUTPUT_ENTRIES) if out.is_dir() \
        else []
    if foreign:
        raise StageError(f"curate.output_dir {out} holds files curation did not write ({', '.join(foreign[:3])}), "
                         "and curation replaces its output whole: point curate.output_dir at a new directory")


def moved(manifest: DatasetManifest, staging: Path, out: Path) -> DatasetManifest:
    """The manifest with its paths where the files will be once ``staging`` becomes ``out``."""
    def relocate(paths: list[str]) -> list[str]:
        return [str(out / Path(path).relative_to(staging)) for path in paths]

    return dataclasses.replace(manifest, train_paths=relocate(manifest.train_paths),
                               eval_paths=relocate(manifest.eval_paths),
                               dropped_paths=relocate(manifest.dropped_paths))


def swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` with two renames; the old output is deleted only once the new one is
    in place (put back if the second rename fails; a crash in between leaves it as ``.<name>.old``)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- 1. read and filter -------------------------------------------------------------------------------
