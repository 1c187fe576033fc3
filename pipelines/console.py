"""What the user sees: raylora's own lines on the terminal, everything the libraries say in a log file.

    raylora train configs/demo.yaml     # progress from rank 0, eval lines, a line per worker failure, the summary

``setup_console`` runs once per process (the CLI calls it after reading the config): Python warnings and the
logs of Ray, Ray Data and bitsandbytes go to ``<workdir>/logs/libraries.log``; MLflow keeps to warnings and
transformers to errors.

Ray workers never write to the terminal: Ray starts with ``log_to_driver=False`` (``cluster.runtime_env``),
so their output and Ray's own chatter stay in Ray's log files. A worker shows a line with ``say``, which
hands it to a relay actor that the driver drains onto its terminal (``relay_worker_lines``); Ray Train's
controller says one line when workers fail (``worker_failure_lines``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError

RELAY_NAME = "raylora-console"  # the relay actor, named in the job's namespace so workers can find it
DRAIN_SECONDS = 0.5
# loggers that come with a handler of their own on the terminal: Ray's (set up when Ray is imported) and Ray
# Data's (when Ray Data is); py.warnings is where logging.captureWarnings sends warnings
TERMINAL_LOGGERS = ("ray", "ray.data", "py.warnings")
QUIET_LIBRARY_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error"}

_configured = False
_printing = threading.Lock()  # the drain thread and a flush print whole batches, in order


class _LogFile(logging.FileHandler):
    """A log file that comes into being with its first record (a command that logs nothing leaves none)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True, encoding="utf-8")

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def setup_console(log_file: Path) -> None:
    """Once per process: warnings and library logs to ``log_file``, the terminal left to raylora.

    Records that no handler takes (bitsandbytes' warnings, Ray's once ``ray.init`` has cleared its handler)
    would go to Python's handler of last resort, stderr: it becomes the log file too."""
    global _configured
    if _configured:
        return
    _configured = True
    for name, value in QUIET_LIBRARY_ENV.items():  # read by those libraries when they are imported
        os.environ.setdefault(name, value)
    import ray.data  # noqa: F401  (importing them installs their terminal handlers, replaced below)

    handler = _LogFile(log_file)
    handler.setLevel(logging.INFO)  # Ray Data logs at DEBUG to its own file already
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.lastResort = handler
    logging.captureWarnings(True)
    for name in TERMINAL_LOGGERS:
        logger = logging.getLogger(name)
        # a FileHandler is a StreamHandler too: only the ones writing to a terminal stream go
        logger.handlers = [h for h in logger.handlers
                           if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)]
        logger.addHandler(handler)
        logger.propagate = False


# --- lines from Ray workers ----------------------------------------------------------------------------

class LineRelay:
    """The actor that holds the lines workers say until the driver takes them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


_relay: dict[str, Any] = {}  # the driver's relay for the current Ray job: {"job", "actor", "thread"}


def relay_worker_lines() -> None:
    """From now on, show the lines Ray workers ``say`` on this process's terminal (idempotent per Ray job).

    Call on the driver after Ray has started; a thread prints what the relay holds every half second."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    if _relay.get("job") == job:
        return
    actor = ray.remote(num_cpus=0)(LineRelay).options(name=RELAY_NAME, get_if_exists=True).remote()
    drain = threading.Thread(target=_drain, args=(actor,), name="raylora-console", daemon=True)
    _relay.update(job=job, actor=actor, thread=drain)
    drain.start()


def stop_relaying() -> None:
    """Print what the relay still holds and stop the drain thread; the CLI calls it before the process exits.

    A daemon thread inside ``ray.get`` while the interpreter finalises and Ray's exit handler tears down its
    core worker crashes the process (SIGSEGV after a finished run, seen once in 2,575 s of suite)."""
    if "actor" not in _relay:
        return
    with contextlib.suppress(Exception):  # Ray already shut down: what the relay held is gone with it
        flush_worker_lines()
    drain = _relay.pop("thread")
    _relay.clear()
    drain.join(timeout=DRAIN_SECONDS * 10)


def _drain(actor: Any) -> None:
    import ray

    # after ray.shutdown a ray.get would start or join a cluster again (ray's auto-init): stop instead
    while _relay.get("actor") is actor and ray.is_initialized():
        try:
            _print_lines(actor)
        except Exception:  # Ray shut down (end of a test session, or of the process): nothing left to show
            return
        time.sleep(DRAIN_SECONDS)


def _print_lines(actor: Any) -> None:
    import ray

    with _printing:
        for line in ray.get(actor.take.remote()):
            print(line, flush=True)


def flush_worker_lines() -> None:
    """Print every line the workers have said so far (before a summary, so it comes after them)."""
    if "actor" in _relay:
        _print_lines(_relay["actor"])


_found: list[Any] = []  # the relay, once this process has found it


def _relay_here() -> Any:
    """The relay actor seen from this process, or None when no driver relays lines."""
    import ray

    if not _found and ray.is_initialized():
        try:
            _found.append(ray.get_actor(RELAY_NAME))
        except ValueError:
            return None
    return _found[0] if _found else None


def say(line: str) -> None:
    """Show ``line`` on the user's terminal: from a Ray worker through the driver's relay; printed directly
    without Ray, or when no driver relays (in a worker, it then lands in the worker's log file)."""
    relay = _relay_here()
    if relay is None:
        print(line, flush=True)
    else:
        relay.say.remote(line)


def worker_failure_lines(max_failures: int) -> Any:
    """A Ray Train callback for ``RunConfig(callbacks=...)``: in the Train controller, it says one line when
    workers fail, naming the checkpoint step the run restarts from, or that no retries are left.

    A ``ConfigError`` from a worker (a problem of the config or the data that only a worker could see) is
    deterministic: retried, it fails the same way after the same start-up. The callback raises it, which Ray
    Train does not retry (an error in a callback ends the run); the driver gets it as the ``ControllerError``'s
    ``controller_failure``.

    Built here, not at import, because ``ray.train`` takes most of a second to import and the CLI imports
    this module for every command."""
    from ray.train import UserCallback

    class WorkerFailures(UserCallback):
        def __init__(self) -> None:
            self.failures = 0
            self.checkpoint_step: int | None = None

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if checkpoint is not None and metrics and "step" in metrics[0]:
                self.checkpoint_step = int(metrics[0]["step"])

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            deterministic = [error for error in worker_exceptions.values() if isinstance(error, ConfigError)]
            if deterministic:
                raise ConfigError(str(deterministic[0]))
            self.failures += 1
            # Ray's own error (a worker's death) names the cause; the others are what it did to the survivors
            rank, error = min(worker_exceptions.items(),
                              key=lambda item: (not type(item[1]).__module__.startswith("ray."), item[0]))
            cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            if 0 <= max_failures < self.failures:
                then = f"no retries left (cluster.max_failures={max_failures})"
            elif self.checkpoint_step is None:
                then = "restarting from scratch (no checkpoint yet)"
            else:
                then = f"restarting from the step-{self.checkpoint_step} checkpoint"
            say(f"[raylora train] worker rank {rank} failed ({cause[:120]}); {then}")

    return WorkerFailures()
