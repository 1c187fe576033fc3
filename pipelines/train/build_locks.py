"""Stale build locks of just-in-time compiled ops, cleared before DeepSpeed starts.

DeepSpeed compiles some ops on first use under torch's extensions folder: on every ``init_distributed`` its
shared-memory collective for the CPU accelerator (about 35 s on 2 cores). torch guards each build with a lock
file that it removes when the build ends; a process killed mid-build leaves the lock behind, and every later
start then waits on it forever without a word (a killed test run did this, and the next CI run hung for 90
minutes). A lock older than any build takes is removed with a warning; a younger one is waited for.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

# far longer than a build takes (about 35 s for the largest op on 2 busy cores), so a live build is never cut off
STALE_AFTER_S = 600.0


def extension_roots() -> list[Path]:
    """Where torch builds extensions: TORCH_EXTENSIONS_DIR, else its per-user cache (one folder per python and
    accelerator inside it)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return [Path(configured)]
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(get_default_build_root())
    return [path for path in root.glob("*") if path.is_dir()] if root.is_dir() else []


def build_lock_files(roots: list[Path]) -> list[Path]:
    return [lock for root in roots for lock in root.glob("*/lock")]


def clear_stale_build_locks(roots: list[Path] | None = None, stale_after_s: float = STALE_AFTER_S,
                            poll_s: float = 1.0) -> list[Path]:
    """Wait for the build locks under ``roots`` to go; remove each one once it is older than ``stale_after_s``.
    Returns the locks removed."""
    roots = extension_roots() if roots is None else roots
    removed = []
    while locks := build_lock_files(roots):
        for lock in locks:
            try:
                age_s = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue  # the build ended between the listing and the look
            if age_s > stale_after_s:
                lock.unlink(missing_ok=True)
                removed.append(lock)
                log.warning("removed the stale build lock %s (%.0f s old: a build killed before it ended)",
                            lock, age_s)
        if build_lock_files(roots):
            time.sleep(poll_s)
    return removed
