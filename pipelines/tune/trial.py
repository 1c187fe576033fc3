"""One trial of the search: a train run (``pipelines.train.train``) with one point of the search space.

The trial's driver function runs in a Tune trial actor and calls the train stage's public function with Ray's
``TuneReportCallback``, so a trial is itself a Ray Train run, multi-worker and DeepSpeed like any other.

Why the trainable is a class: when the scheduler stops a trial, Tune ends the trial actor, and in Ray 2.60
(Train V2) the placement group of that trial's Train worker group outlives it (its controller dies without
cleaning up; Ray's PlacementGroupCleaner watches it through the State API, which a cluster without the
dashboard does not have). The freed CPU never comes back, and the next trial's worker group waits for it
until "The worker group startup timed out". So the trial's ``cleanup`` first aborts its own training run
through the Train controller (``TrainController.abort``: workers stopped, placement group removed), whose
handle the controller hands over when it starts (``ShareControllerHandle``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.artifacts import DatasetManifest
from pipelines.config import RayloraConfig
from pipelines.config.search_space import apply_point
from pipelines.tune.space import SCHEDULER_STEP, last_scheduler_step

ABORT_TIMEOUT_S = 60
TRAIN_RESULT_KEY = "train_result_path"


@ray.remote(num_cpus=0)
class ControllerHandle:
    """Holds the running Train controller's actor handle for the trial that started it."""

    def __init__(self) -> None:
        self.handle = None

    def set(self, handles: list) -> None:
        self.handle = handles[0]  # in a list, so Ray passes the handle itself rather than resolving it

    def get(self) -> Any:
        return self.handle


class ReportToTune(TuneReportCallback):
    """Ray's TuneReportCallback, adding the step as the scheduler sees it (``space.last_scheduler_step``)."""

    def __init__(self, last_scheduler_step: int) -> None:
        super().__init__()
        self.last_scheduler_step = last_scheduler_step

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        first = {**metrics[0], SCHEDULER_STEP: min(metrics[0].get("step", 0), self.last_scheduler_step)}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


class ShareControllerHandle(ControllerCallback):
    """Runs inside the Train controller: gives its own actor handle to the trial (Train's public
    ``UserCallback`` has no start hook; Ray appends other callbacks to its internal ones for such uses)."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder

    def after_controller_start(self, train_run_context: Any) -> None:
        ray.get(self.holder.set.remote([ray.get_runtime_context().current_actor]))


@dataclass
class RunningTrain:
    """The trial actor's training run, shared by the trial's thread and Tune's cleanup call."""

    holder: Any = None
    stopping: bool = False


RUNNING = RunningTrain()
RUNNING_LOCK = threading.Lock()


def trial_config(base: dict[str, Any], point: dict[str, Any], trial_id: str) -> RayloraConfig:
    """The trial's config: the base config with the point applied, under its own run name (trial ids carry no
    timestamps, so a restored search finds its trials' runs again)."""
    index = trial_id.rsplit("_", 1)[-1]
    return RayloraConfig.model_validate(apply_point({**base, "run_name": f"{base['run_name']}-trial{index}"}, point))


def run_trial(point: dict[str, Any], base: dict[str, Any], manifest: dict[str, Any], parent_run_id: str,
              cwd: str) -> None:
    """The trial's driver: one train run; its last report carries the TrainResult's path. It runs in the
    search driver's working directory (Tune starts a trial in its trial directory), where the config's
    relative paths point."""
    from ray import tune

    from pipelines.train import TRAIN_RESULT_FILE, train

    os.chdir(cwd)
    cfg = trial_config(base, point, tune.get_context().get_trial_id())
    holder = ControllerHandle.remote()
    with RUNNING_LOCK:
        RUNNING.holder, RUNNING.stopping = holder, False
    try:
        result = train(cfg, DatasetManifest(**manifest), parent_run_id=parent_run_id,
                       callbacks=[ReportToTune(last_scheduler_step(cfg)), ShareControllerHandle(holder)])
    except Exception:
        if RUNNING.stopping:  # the scheduler stopped this trial and cleanup aborted its run: the expected end
            return
        raise
    finally:
        with RUNNING_LOCK:
            RUNNING.holder = None
    # a finished run reports nothing when it is only looked up, so its final metrics are reported once here
    tune.report({**result.metrics, SCHEDULER_STEP: last_scheduler_step(cfg), TRAIN_RESULT_KEY: str(Path(result.adapter_path).parent / TRAIN_RESULT_FILE)})


def abort_running_train() -> None:
    """Abort the trial actor's running Train run, if any (its workers and placement group go with it)."""
    with RUNNING_LOCK:
        holder, RUNNING.stopping = RUNNING.holder, RUNNING.holder is not None
    if holder is None:
        return
    controller = ray.get(holder.get.remote())
    if controller is None:
        return
    # abort ends the controller actor itself, so its call never returns a value
    with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)


def trial_trainable(base: dict[str, Any], manifest: dict[str, Any], parent_run_id: str, cwd: str) -> type:
    """The Tune trainable: ``run_trial`` as a function trainable whose cleanup aborts a stopped trial's run."""
    from ray.tune.trainable.function_trainable import wrap_function

    def raylora_trial(point: dict[str, Any]) -> None:
        run_trial(point, base, manifest, parent_run_id, cwd)

    class RayloraTrial(wrap_function(raylora_trial)):
        def cleanup(self) -> None:
            abort_running_train()
            super().cleanup()

    return RayloraTrial
