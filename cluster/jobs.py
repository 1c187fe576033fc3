"""Ray Jobs from the laptop: ``raylora submit`` ships the project and the config to a running cluster and runs the
whole pipeline there as one job; ``raylora jobs`` looks after a job already submitted.

    raylora submit configs/llama-3.1-8b-qlora.yaml --address http://HEAD:8265 [key.path=value ...] [--no-wait]
    raylora jobs --address http://HEAD:8265 status|logs|stop JOB_ID

Everything goes through the head's dashboard (the Jobs API over HTTP); the laptop never joins the cluster.
Token authentication: with ``RAY_AUTH_MODE=token`` Ray's client sends the token itself (``RAY_AUTH_TOKEN``, else
the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``); without that variable it sends none, so a token
the user gave explicitly (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) is sent here as the same bearer header.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError

# the project the job runs: this checkout (``pip install -e .``), shipped as the job's working_dir
PROJECT_DIR = Path(__file__).resolve().parents[1]
# never shipped: environments, version control, caches, and the laptop's runs, stores, data and weights (the
# cluster reads its own from cluster.storage_path, tracking.tracking_uri and data.sources); gitignore patterns
SHIPPED_EXCLUDES = [
    ".venv", "venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".hypothesis",
    ".raylora", "runs", "mlruns", "mlflow.db", "ray_results", "/data", "*.parquet", "*.safetensors", "*.bin",
]
JOB_CONFIG_DIR = "raylora-job"  # where the config lands inside the job's working_dir
CONNECT_TIMEOUT_S = 5.0
# how long a job whose log stream ended, or that was asked to stop (Ray sends SIGTERM, then SIGKILL after
# RAY_JOB_STOP_WAIT_TIME_S, 3 s by default), may take to show its final status
SETTLE_S = 60.0
FIX_ADDRESS = ("start the head (ray start --head --include-dashboard=true) or pass its dashboard address, "
               "e.g. --address http://HEAD:8265")
FIX_TOKEN = ("give the cluster's token (`ray get-auth-token` on the head): export RAY_AUTH_TOKEN=... or "
             "RAY_AUTH_TOKEN_PATH=FILE, or RAY_AUTH_MODE=token to send ~/.ray/auth_token")
# the job statuses Ray never leaves
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Head:
    address: str  # the head's dashboard URL
    client: Any  # ray.job_submission.JobSubmissionClient on it


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str  # Ray's JobStatus: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str  # Ray's word on it; for a failed job, the error
    run_name: str  # from the job's metadata; "" for a job raylora did not submit


def dashboard_address(address: str | None) -> str:
    """The head's dashboard URL: ``--address``, else Ray's ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS``.

    Ray's client always prefers those variables to the address it is given, so one that disagrees with
    ``--address`` is an error here rather than a silent switch of cluster.
    """
    from_env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if address and from_env and from_env.rstrip("/") != address.rstrip("/"):
        raise ConfigError(f"RAY_API_SERVER_ADDRESS / RAY_ADDRESS={from_env} would override --address {address} "
                          "in Ray's client: unset it, or drop --address to use it")
    chosen = (address or from_env or "").rstrip("/")
    if not chosen:
        raise ConfigError("no cluster given: pass --address http://HEAD:8265 (the head's dashboard) or set "
                          "RAY_ADDRESS to it")
    parts = urlsplit(chosen)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--address {chosen} is not the head's dashboard URL: pass e.g. http://HEAD:8265")
    return chosen


def check_reachable(address: str) -> None:
    """Fail within seconds when nothing listens at the address (Ray's client would wait on a silent host)."""
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise ConfigError(f"nothing answers at {address} ({reason}): {FIX_ADDRESS}") from None


def auth_headers() -> dict[str, str]:
    """The bearer header for a token the user gave explicitly; {} leaves it to Ray's client (see the top)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and token_path:
        try:
            token = Path(token_path).expanduser().read_text().strip()
        except OSError as err:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={token_path} cannot be read ({err.strerror}): point it at "
                              "the file holding the cluster's token") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str | None) -> Head:
    """A ``JobSubmissionClient`` on the head's dashboard, after checking that something listens there."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    check_reachable(url)
    try:
        return Head(url, JobSubmissionClient(url, headers=auth_headers()))
    except AuthenticationError:
        raise ConfigError(f"the cluster at {url} wants its token: {FIX_TOKEN}") from None
    except (ConnectionError, RuntimeError) as err:  # Ray's words for a refused or non-Ray HTTP answer
        raise ConfigError(f"no Ray dashboard answers at {url} ({err}): {FIX_ADDRESS}") from None


def job_runtime_env(cfg: RayloraConfig, working_dir: Path) -> dict[str, Any]:
    """``cluster.runtime_env`` (pip, uv, env_vars, ...: nothing is installed unless the user asks) with the
    staged working_dir, and the user's excludes added to raylora's."""
    user = dict(cfg.cluster.runtime_env)
    user.pop("working_dir", None)  # staged: see stage_working_dir
    excludes = [*SHIPPED_EXCLUDES, *(p for p in user.pop("excludes", []) if p not in SHIPPED_EXCLUDES)]
    return {**user, "working_dir": str(working_dir), "excludes": excludes}


def stage_working_dir(cfg: RayloraConfig, config_path: Path, staging: Path) -> str:
    """Fill ``staging`` with links to the project's top-level entries (``cluster.runtime_env.working_dir``
    when the user gives a local one) plus a copy of the config, so a config kept outside the project travels
    too; Ray packs the links' targets. Returns the config's path inside the job's working_dir."""
    source = cfg.cluster.runtime_env.get("working_dir")
    if source is None:
        if not (PROJECT_DIR / "pyproject.toml").is_file():
            raise ConfigError(f"raylora submit ships its source checkout, and {PROJECT_DIR} is not one: install "
                              "raylora with `pip install -e .` from a clone, or set cluster.runtime_env.working_dir")
        project = PROJECT_DIR
    else:
        project = Path(source).expanduser()
        if "://" in str(source) or not project.is_dir():
            raise ConfigError(f"cluster.runtime_env.working_dir={source} is not a local directory; raylora submit "
                              "adds the config to the directory it ships: give a local directory or drop the key")
    for entry in project.iterdir():
        if entry.name != JOB_CONFIG_DIR:
            (staging / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    (staging / JOB_CONFIG_DIR).mkdir()
    shutil.copyfile(config_path, staging / JOB_CONFIG_DIR / config_path.name)
    return f"{JOB_CONFIG_DIR}/{config_path.name}"


def job_entrypoint(config_in_job: str, overrides: list[str]) -> str:
    """``raylora run`` from the shipped project (``python -m`` runs the shipped code, not an installed copy).
    ``cluster.runtime_env={}`` last: the job's runtime_env already carries it, and Ray refuses a driver that
    asks for the same keys again. Overrides of it stay out: the entrypoint is shown to whoever lists the
    cluster's jobs, and its env_vars hold tokens."""
    kept = [text for text in overrides if not text.partition("=")[0].startswith("cluster.runtime_env")]
    return shlex.join(["python", "-m", "pipelines.cli", "run", config_in_job, *kept, "cluster.runtime_env={}"])


def relative_path_warning(cfg: RayloraConfig) -> str | None:
    """One line naming what the job would keep in its temporary copy of the project on the head."""
    local = [key for key, value in (("workdir", cfg.workdir), ("cluster.storage_path", cfg.cluster.storage_path))
             if value is not None and "://" not in value and not Path(value).is_absolute()]
    if cfg.tracking.tracking_uri is None:
        local.append("tracking.tracking_uri (unset: SQLite under workdir)")
    elif cfg.tracking_uri.startswith("sqlite:") and not Path(cfg.tracking_uri.removeprefix("sqlite:///")).is_absolute():
        local.append("tracking.tracking_uri (a relative SQLite path)")
    if not local:
        return None
    return (f"note: {', '.join(local)} would live in the job's temporary copy of the project on the head: use "
            "paths on shared storage (NFS) and an MLflow tracking server to keep the run")


def submit(client: Any, cfg: RayloraConfig, config_path: str, overrides: list[str]) -> str:
    """Submit ``raylora run CONFIG overrides`` as a Ray job; returns its submission id,
    ``raylora-<run_name>-<8 hex>`` (the run name is in its metadata too)."""
    with tempfile.TemporaryDirectory(prefix="raylora-submit-") as tmp:
        staging = Path(tmp)
        config_in_job = stage_working_dir(cfg, Path(config_path), staging)
        job_id = client.submit_job(
            entrypoint=job_entrypoint(config_in_job, overrides),
            submission_id=f"raylora-{cfg.run_name}-{secrets.token_hex(4)}",
            runtime_env=job_runtime_env(cfg, staging),  # packed and uploaded before submit_job returns
            metadata={"raylora.run_name": cfg.run_name, "raylora.config": Path(config_path).name},
        )
    return job_id


def read_state(client: Any, job_id: str) -> JobState:
    info = client.get_job_info(job_id)
    return JobState(job_id=job_id, status=str(info.status.value), message=info.message or "",
                    run_name=(info.metadata or {}).get("raylora.run_name", ""))


def follow(client: Any, job_id: str) -> JobState:
    """Stream the job's logs to stdout until it ends; its final state."""

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(stream())
    return wait_until_done(client, job_id)


def wait_until_done(client: Any, job_id: str) -> JobState:
    """The job's state once terminal, or as it is after ``SETTLE_S``."""
    deadline = time.monotonic() + SETTLE_S
    while (state := read_state(client, job_id)).status not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def job_status(client: Any, job_id: str) -> JobState:
    """The job's state; an id the cluster does not know is a usage error naming the fix."""
    try:
        return read_state(client, job_id)
    except RuntimeError as err:
        if "does not exist" not in str(err):
            raise
        raise ConfigError(f"the cluster has no job {job_id}: use the id `raylora submit` printed "
                          "(raylora-<run_name>-<hex>)") from None


def job_logs(client: Any, job_id: str) -> str:
    job_status(client, job_id)
    return client.get_job_logs(job_id)


def stop_job(client: Any, job_id: str) -> JobState:
    """Stop the job and wait for it to end; a job that already ended is left as it is."""
    state = job_status(client, job_id)
    if state.status in TERMINAL_STATUSES:
        return state
    client.stop_job(job_id)
    return wait_until_done(client, job_id)
