"""A secret planted in a config, and where it must never be found.

    from planted import PLANTED_SECRET, RUNTIME_ENV_WITH_SECRET, files_holding
    raw["cluster"]["runtime_env"] = RUNTIME_ENV_WITH_SECRET
    assert files_holding(PLANTED_SECRET, workdir) == []   # every file, MLflow's SQLite store and artifacts too
"""

from __future__ import annotations

from pathlib import Path

PLANTED_SECRET = "hf_plantedSecret7c1e9a"
# the README's way to hand a job a token, plus a variable whose name gives nothing away
RUNTIME_ENV_WITH_SECRET = {"env_vars": {"HF_TOKEN": PLANTED_SECRET, "TEAM_SETTING": PLANTED_SECRET + "-b"}}


def files_holding(secret: str, *roots: Path) -> list[Path]:
    """Every file under ``roots`` whose bytes contain ``secret``."""
    needle = secret.encode()
    return sorted(path for root in roots for path in Path(root).rglob("*")
                  if path.is_file() and not path.is_symlink() and needle in path.read_bytes())
