"""The one module that talks to MLflow: runs, params, the rank-aware metric logger, and the model registry.

    raylora train configs/demo.yaml      # the train stage opens, logs to and finishes its run through here
    raylora register configs/demo.yaml   # the register stage logs the model and moves aliases through here
    mlflow ui --backend-store-uri sqlite:///.raylora/mlflow.db

Stages never import ``mlflow`` themselves. A run is found by its raylora run name (tag ``raylora.run_name``):
an unfinished run with that name is continued, so a resumed training run keeps one MLflow run. Only plain
strings (tracking URI, run id) cross Ray boundaries; each process builds its own client from them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.config.secrets import redact

RUN_NAME_TAG = "raylora.run_name"
FINGERPRINT_TAG = "raylora.fingerprint"
STAGE_TAG = "raylora.stage"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow shows a run with it nested under that run
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
    """The experiment's id, created on first use; on a SQLite store its artifacts live beside the database file
    (MLflow's default is ./mlruns of whichever process creates it: a Ray job's scratch copy of the project)."""
    found = client(tracking_uri).get_experiment_by_name(experiment)
    if found:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return client(tracking_uri).create_experiment(experiment, artifact_location=location)


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
    """``params`` (a config dict or part of one, keyed from the config's root) flattened, secrets redacted."""
    from mlflow.entities import Param

    items = list(flat_params(redact(params)).items())  # whoever calls: no secret reaches the store
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client(tracking_uri).log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + PARAMS_PER_BATCH]])


def fail_run(tracking_uri: str, run_id: str) -> None:
    client(tracking_uri).set_terminated(run_id, status="FAILED")


def kill_run(tracking_uri: str, run_id: str) -> None:
    """A run the user stopped (Ctrl-C): KILLED, as MLflow marks a run ended by its user."""
    client(tracking_uri).set_terminated(run_id, status="KILLED")


def finish_run(tracking_uri: str, run_id: str, *, metrics: Mapping[str, float], step: int,
               artifacts: Mapping[str, Path] | None = None) -> None:
    """Log the final metrics (as ``final_<name>``) and each ``artifact_path -> local dir or file``, then close
    the run."""
    from mlflow.entities import Metric

    mlflow_client = client(tracking_uri)
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), now, step) for k, v in metrics.items()])
    for artifact_path, local in (artifacts or {}).items():
        log_files(tracking_uri, run_id, [Path(local)], artifact_path)
    mlflow_client.set_terminated(run_id, status="FINISHED")


def log_files(tracking_uri: str, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Each file, or each directory's files, under ``artifact_path`` of the run (a finished run too)."""
    mlflow_client = client(tracking_uri)
    for local in paths:
        if Path(local).is_dir():
            mlflow_client.log_artifacts(run_id, str(local), artifact_path=artifact_path)
        else:
            mlflow_client.log_artifact(run_id, str(local), artifact_path=artifact_path)


def child_runs(tracking_uri: str, experiment: str, parent_run_id: str) -> dict[str, str]:
    """raylora run name -> run id of every run nested under ``parent_run_id``."""
    runs = client(tracking_uri).search_runs(
        [experiment_id(tracking_uri, experiment)], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'")
    return {run.data.tags.get(RUN_NAME_TAG, run.info.run_id): run.info.run_id for run in runs}


def mark_stopped_early(tracking_uri: str, run_id: str, step: int) -> None:
    """A trial the search's scheduler stopped: KILLED, not FAILED, and tagged with the step it reached."""
    mlflow_client = client(tracking_uri)
    mlflow_client.set_tag(run_id, "raylora.stopped_early_at_step", str(step))
    mlflow_client.set_terminated(run_id, status="KILLED")


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


class RegistryNotFound(LookupError):
    """A registered model, version or alias that the registry does not hold."""


def is_mlflow_error(err: BaseException, code: str) -> bool:
    """Whether ``err`` is MLflow's error with ``code`` (e.g. RESOURCE_ALREADY_EXISTS), from a local store or a server."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code == code


def prepare_sqlite_store(uri: str) -> None:
    """Create a local SQLite store once, under a file lock, in write-ahead-log mode.

    Two processes opening a new store at once both try to create its tables; WAL lets readers and one writer
    proceed together, so concurrent registrations wait (MLflow's busy timeout) instead of failing with
    "database is locked"."""
    import fcntl
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".create-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from mlflow.tracking import MlflowClient

        store_client = MlflowClient(uri, uri)
        store_client.search_experiments(max_results=1)  # creates the tracking tables
        store_client.search_registered_models(max_results=1)  # and the registry's
        with sqlite3.connect(path, timeout=60) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def log_adapter_model(tracking_uri: str, run_id: str, *, model_code: Path, code_paths: list[Path],
                      artifacts: Mapping[str, str], model_config: Mapping[str, Any], input_example: list[str],
                      pip_requirements: list[str], params: Mapping[str, str]) -> str:
    """Log a pyfunc model from code (MLflow 3's logged model, ``name="model"``) into ``run_id``; returns its
    ``models:/<model_id>`` URI. ``code_paths`` are files shipped beside the code and importable by their own
    names where the model loads. Every artifact is uploaded before this returns."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # prompts in, answers out, said outright: without it MLflow infers the signature by loading the model in this
    # process, where the code it ships beside the model is not importable, and warns that predict failed
    signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]))
    previous = mlflow.get_tracking_uri()  # the fluent API logs where the process-wide URI points: put it back after
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(model_code), code_paths=[str(path) for path in code_paths],
                artifacts=dict(artifacts),
                model_config=dict(model_config), input_example=input_example, signature=signature,
                pip_requirements=pip_requirements, params=dict(params))
    finally:
        mlflow.set_tracking_uri(previous)
    return info.model_uri


def create_run(tracking_uri: str, experiment: str, name: str, tags: Mapping[str, str]) -> str:
    return client(tracking_uri).create_run(experiment_id(tracking_uri, experiment), run_name=name,
                                           tags=dict(tags)).info.run_id


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(tracking_uri).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


class Registry:
    """The MLflow model registry behind ``registry_uri``: versions, their tags and aliases, model tags.

    A name, version or alias the registry lacks raises ``RegistryNotFound`` with one line that says which."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.registry_uri = tracking_uri, registry_uri or tracking_uri
        prepare_sqlite_store(self.registry_uri)
        self.client = MlflowClient(tracking_uri, self.registry_uri)

    def register(self, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
        """A new version of ``name`` (created if missing) from the logged model ``models:/<model_id>``; returns
        the version once the registry says it is READY."""
        self.create_model(name, {})
        model_id = model_uri.removeprefix("models:/")
        # the logged model's own location, not models:/<id>: a SQLite registry would look that id up in the
        # process-wide tracking store rather than in this one
        source = self.client.get_logged_model(model_id).artifact_location
        created = self.client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags),
                                                   model_id=model_id)
        return str(created.version)

    def registered_model(self, name: str) -> Any:
        try:
            return self.client.get_registered_model(name)
        except Exception as err:
            if is_mlflow_error(err, "RESOURCE_DOES_NOT_EXIST"):
                raise RegistryNotFound(f"registered model {name!r} does not exist") from err
            raise

    def model_tags(self, name: str) -> dict[str, str]:
        return dict(self.registered_model(name).tags)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(name, key, value)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        self.model_tags(name)  # a missing model is said as such, not as a missing version
        try:
            return dict(self.client.get_model_version(name, version).tags)
        except Exception as err:
            if is_mlflow_error(err, "RESOURCE_DOES_NOT_EXIST") or is_mlflow_error(err, "INVALID_PARAMETER_VALUE"):
                raise RegistryNotFound(f"registered model {name!r} has no version {version!r}") from err
            raise

    def download_version(self, name: str, version: str, dst: Path) -> Path:
        """The files of a version under ``dst``. Its download URI comes from this registry: MLflow itself
        resolves ``models:/`` URIs against the process-wide registry, whatever registry it is given."""
        from mlflow.artifacts import download_artifacts

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        source = self.client.get_model_version_download_uri(name, version)
        return Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri))

    def versions_tagged(self, name: str, tags: Mapping[str, str]) -> list[str]:
        """The versions of ``name`` that carry every one of ``tags``, oldest first."""
        where = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
        return sorted((str(v.version) for v in self.client.search_model_versions(where)), key=int)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None when no version carries it."""
        aliases = self.registered_model(name).aliases
        return str(aliases[alias]) if alias in aliases else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def create_model(self, name: str, tags: Mapping[str, str]) -> bool:
        """Create ``name``; False when it already exists. The store's unique name makes this atomic, on a
        server as on SQLite: the one compare-and-set the registry offers."""
        try:
            self.client.create_registered_model(name, tags=dict(tags))
        except Exception as err:
            if is_mlflow_error(err, "RESOURCE_ALREADY_EXISTS"):
                return False
            raise
        return True

    def delete_model(self, name: str) -> None:
        try:
            self.client.delete_registered_model(name)
        except Exception as err:
            if not is_mlflow_error(err, "RESOURCE_DOES_NOT_EXIST"):
                raise
