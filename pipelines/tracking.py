"""The one module that talks to MLflow: runs, params, and the rank-aware metric logger.

    raylora train configs/demo.yaml      # the train stage opens, logs to and finishes its run through here
    mlflow ui --backend-store-uri sqlite:///.raylora/mlflow.db

Stages never import ``mlflow`` themselves. A run is found by its raylora run name (tag ``raylora.run_name``):
an unfinished run with that name is continued, so a resumed training run keeps one MLflow run. Only plain
strings (tracking URI, run id) cross Ray boundaries; each process builds its own client from them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

RUN_NAME_TAG = "raylora.run_name"
FINGERPRINT_TAG = "raylora.fingerprint"
STAGE_TAG = "raylora.stage"
MAX_PARAM_CHARS = 500  # MLflow rejects longer param values
PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params


@lru_cache(maxsize=4)
def client(tracking_uri: str) -> Any:
    """One MlflowClient per store and process."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> ``{"train.lr": "0.0002", ...}``, values cut to what MLflow accepts."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def experiment_id(tracking_uri: str, experiment: str) -> str:
    """The experiment's id, created on first use."""
    found = client(tracking_uri).get_experiment_by_name(experiment)
    return found.experiment_id if found else client(tracking_uri).create_experiment(experiment)


def open_run(tracking_uri: str, experiment: str, run_name: str, stage: str, *, fingerprint: str,
             tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """The run id for ``run_name`` at ``fingerprint``: its unfinished run is continued, else a new run (named
    ``<run_name>-<fingerprint>``) gets ``tags`` and the flattened ``params``."""
    mlflow_client = client(tracking_uri)
    exp_id = experiment_id(tracking_uri, experiment)
    unfinished = mlflow_client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}' and tags.`{FINGERPRINT_TAG}` = "
                                f"'{fingerprint}' and attributes.status != 'FINISHED'",
        max_results=1)
    if unfinished:
        return unfinished[0].info.run_id
    run = mlflow_client.create_run(exp_id, run_name=f"{run_name}-{fingerprint}", tags={
        RUN_NAME_TAG: run_name, FINGERPRINT_TAG: fingerprint, STAGE_TAG: stage, **tags})
    log_params(tracking_uri, run.info.run_id, params)
    return run.info.run_id


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = list(flat_params(params).items())
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client(tracking_uri).log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + PARAMS_PER_BATCH]])


def fail_run(tracking_uri: str, run_id: str) -> None:
    client(tracking_uri).set_terminated(run_id, status="FAILED")


def finish_run(tracking_uri: str, run_id: str, *, metrics: Mapping[str, float], step: int,
               artifacts: Mapping[str, Path] | None = None) -> None:
    """Log the final metrics (as ``final_<name>``) and each ``artifact_path -> local dir``, then close the run."""
    from mlflow.entities import Metric

    mlflow_client = client(tracking_uri)
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), now, step) for k, v in metrics.items()])
    for artifact_path, local_dir in (artifacts or {}).items():
        mlflow_client.log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)
    mlflow_client.set_terminated(run_id, status="FINISHED")


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of ``key``, by step."""
    return sorted((m.step, m.value) for m in client(tracking_uri).get_metric_history(run_id, key))


class MetricLogger:
    """Step metrics into one MLflow run, batched to keep the store fast (torchtune's metric-logger shape).

    Every rank builds one; only rank 0 writes, so call sites never ask which rank they are on. Without a
    tracking URI or run id it is a no-op too (a plain per-worker step, e.g. on a GPU box without MLflow).
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, *, rank: int = 0, every: int = 10) -> None:
        self.enabled = bool(tracking_uri and run_id) and rank == 0
        self.tracking_uri, self.run_id, self.every = tracking_uri, run_id, every
        self.pending: list[Any] = []
        self.calls = 0

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.calls += 1
        if self.calls >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.enabled and self.pending:
            client(self.tracking_uri).log_batch(self.run_id, metrics=self.pending)
        self.pending, self.calls = [], 0

    def close(self) -> None:
        self.flush()
