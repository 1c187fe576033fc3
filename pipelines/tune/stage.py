"""The tune stage: a Ray Tune search over adapter rank, alpha, learning rate (any config key), each trial a
train run, weak trials stopped early by ASHA.

    raylora tune configs/demo.yaml
    raylora tune configs/demo.yaml tune.search=tpe tune.num_samples=8
    raylora tune configs/demo.yaml tune.search=grid 'tune.search_space={adapter.r: {grid: [4, 8, 16]}}'

``tune(cfg, manifest) -> TuneResult``: the search's fingerprint (the base run's plus the tune section) names
its Ray Tune experiment under ``<workdir>/tune/<run_name>/ray/``. A search whose result exists is reported,
not rerun; a search whose driver was killed is restored (``Tuner.restore``): finished trials are kept,
unfinished ones resume from their last checkpoint. Every trial reads the same prepared dataset and base model
(the train stage keys them by content). One MLflow parent run holds each trial's run nested under it, the
table of trials and the plots; ``<workdir>/tune/<run_name>/tune_result.json`` names the best trial's
TrainResult and adapter, which is what ``raylora run`` registers (no retraining).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

from cluster.resources import check_resources
from cluster.runtime_env import ensure_ray
from pipelines import tracking
from pipelines.artifacts import DatasetManifest, TuneResult, tune_result_path
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError, Interrupted, StageError
from pipelines.fingerprint import Fingerprint, flatten, train_fingerprint
from pipelines.interrupts import in_a_thread
from pipelines.tune.report import plot_search, trial_table
from pipelines.tune.space import DRIVER_CPUS, scheduler, search_algorithm, trial_count, trials_at_once
from pipelines.tune.trial import TRAIN_RESULT_KEY, trial_trainable

SEARCH_NEUTRAL_KEYS = ("tune.max_concurrent_trials",)


def search_fingerprint(cfg: RayloraConfig, manifest: DatasetManifest) -> Fingerprint:
    inputs = dict(train_fingerprint(cfg, manifest.data_hashes).inputs)
    inputs.update({k: v for k, v in flatten({"tune": cfg.tune.model_dump(mode="json")}).items()
                   if k not in SEARCH_NEUTRAL_KEYS})
    return Fingerprint(inputs)


def check_search(cfg: RayloraConfig) -> None:
    """What only a search needs of the config (a run that does not search may turn evaluation off)."""
    if cfg.tune.metric.startswith("eval") and not cfg.train.eval:
        raise ConfigError(f"tune.metric={cfg.tune.metric} is measured by evaluation, which train.eval=false turns "
                          "off: set train.eval=true to search")


def tune(cfg: RayloraConfig, manifest: DatasetManifest) -> TuneResult:
    """Search, report, and return the TuneResult (also written as JSON)."""
    check_search(cfg)
    fingerprint = search_fingerprint(cfg, manifest)
    result_path = tune_result_path(cfg).resolve()
    out_dir = result_path.parent
    if result_path.is_file():
        earlier = TuneResult.read(result_path)
        if earlier.fingerprint == fingerprint.digest:
            say(f"search {cfg.run_name} ({fingerprint.digest}) already finished: best trial "
                f"{earlier.best_trial['trial_id']}, its TrainResult: {earlier.best_train_result}")
            return earlier
    ensure_ray(cfg)
    check_resources(cfg, "each search trial", extra={"CPU": DRIVER_CPUS})
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0: no tables
    parent_run_id = tracking.open_run(
        cfg.tracking_uri, cfg.tracking.experiment, cfg.run_name, "tune", fingerprint=fingerprint.digest,
        tags={"train_hash": manifest.train_hash, "eval_hash": manifest.eval_hash, "base_model": cfg.model.base},
        params={"tune": cfg.tune.model_dump(mode="json")})
    try:
        grid = in_a_thread(build_tuner(cfg, manifest, fingerprint, out_dir, parent_run_id).fit, "raylora-tune")
        check_finished(grid, trial_count(cfg))
        trials, curves = collect_trials(grid, cfg.tune.metric)
        best = best_trial(trials, cfg.tune.metric, cfg.tune.mode)
    except KeyboardInterrupt:
        tracking.kill_run(cfg.tracking_uri, parent_run_id)
        raise Interrupted(f"interrupted; rerun the same command to restore search {cfg.run_name} "
                          f"({fingerprint.digest}): finished trials are kept, the others resume") from None
    except Exception:
        tracking.fail_run(cfg.tracking_uri, parent_run_id)
        raise
    say("\n" + trial_table(trials, cfg.tune.metric, best["trial_id"]))
    plots = plot_search(trials, curves, cfg.tune.metric, out_dir / "plots")
    result = TuneResult(metric=cfg.tune.metric, mode=cfg.tune.mode, trials=trials, best_trial=best,
                        best_train_result=best["train_result"], fingerprint=fingerprint.digest,
                        mlflow_run_id=parent_run_id, plots=[str(p) for p in plots])
    result.write(result_path)
    close_mlflow_runs(cfg, parent_run_id, trials, best, result_path)
    say(f"best trial {best['trial_id']}: {best['params']} {cfg.tune.metric}={best['metrics'][cfg.tune.metric]:.4g}; "
        f"TrainResult {best['train_result']}; plots in {out_dir / 'plots'}")
    return result


def build_tuner(cfg: RayloraConfig, manifest: DatasetManifest, fingerprint: Fingerprint, out_dir: Path,
                parent_run_id: str) -> Any:
    """A new Tuner, or the one a killed driver left (same fingerprint), restored with its finished trials."""
    import ray
    from ray import tune

    trainable = tune.with_resources(
        trial_trainable(cfg.public_dump(), dataclasses.asdict(manifest), parent_run_id, os.getcwd()),
        {"CPU": DRIVER_CPUS})
    storage, name = out_dir / "ray", f"search-{fingerprint.digest}"
    if tune.Tuner.can_restore(str(storage / name)):
        say(f"search {cfg.run_name} ({fingerprint.digest}) stopped before it finished: restoring it; finished "
            "trials are kept, unfinished and failed ones resume from their last checkpoint")
        return tune.Tuner.restore(str(storage / name), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    at_once = trials_at_once(cfg, ray.cluster_resources())
    say(f"searching {len(cfg.tune.search_space)} keys ({', '.join(cfg.tune.search_space)}) with "
        f"{cfg.tune.search}, {trial_count(cfg)} trials, {cfg.tune.scheduler}, {at_once} trial(s) at a time")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric, mode=cfg.tune.mode, num_samples=trial_count(cfg),
            search_alg=search_algorithm(cfg, at_once), scheduler=scheduler(cfg), max_concurrent_trials=at_once,
            reuse_actors=False,  # a stopped trial's actor ends with its cleanup (see trial.py)
            trial_name_creator=lambda trial: f"trial_{trial.trial_id}",
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  callbacks=[TrialProgress(cfg.tune.metric)]),
    )


def check_finished(grid: Any, expected_trials: int) -> None:
    """A search Tune stopped before its end (a stop signal: Ctrl-C, a job stopped) returns like a finished one,
    with trials never started or left running; writing its result would make a rerun report it as done."""
    ended = grid.num_terminated + grid.num_errors
    if len(grid) < expected_trials or ended < len(grid):
        raise StageError(f"the search stopped before it finished ({ended} of {expected_trials} trials ended): "
                         "rerun the same command to resume it (finished trials are kept)")


def collect_trials(grid: Any, metric: str) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, float]]]]:
    """Every trial as plain data, and each trial's metric by step."""
    trials, curves = [], {}
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        history = result.metrics_dataframe
        curve = []
        if history is not None and metric in history and "step" in history:
            curve = [(int(s), float(v)) for s, v in zip(history["step"], history[metric], strict=True)
                     if isinstance(v, int | float) and not math.isnan(v)]
        curves[trial_id] = sorted(set(curve))
        finished = TRAIN_RESULT_KEY in metrics
        trials.append({
            "trial_id": trial_id,
            "params": dict(result.config or {}),
            "metrics": {k: float(v) for k, v in metrics.items()
                        if k.startswith("eval") and isinstance(v, int | float)},
            "steps": int(metrics.get("step", 0)),
            "stopped_early": result.error is None and not finished,
            "error": None if result.error is None else error_line(result.error),
            "train_result": metrics.get(TRAIN_RESULT_KEY),
        })
    return sorted(trials, key=lambda t: t["trial_id"]), curves


def error_line(error: BaseException) -> str:
    """The last line of a trial's error: the exception that ended it, not Ray's wrapping of it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def best_trial(trials: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The best trial by ``metric`` among those that trained to the end (only they exported an adapter)."""
    finished = [t for t in trials if t["train_result"] and metric in t["metrics"]]
    if not finished:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"]) or "none finished"
        raise StageError(f"no trial of the search trained to the end and reported {metric} ({errors}): "
                         "fix the error above, or lower tune.grace_period / use tune.scheduler=fifo")
    pick = min if mode == "min" else max
    return pick(finished, key=lambda t: t["metrics"][metric])


def close_mlflow_runs(cfg: RayloraConfig, parent_run_id: str, trials: list[dict[str, Any]], best: dict[str, Any],
                      result_path: Path) -> None:
    """Stopped trials' runs are KILLED (not failed); the parent run gets the best metrics, the plots and the
    TuneResult."""
    runs = tracking.child_runs(cfg.tracking_uri, cfg.tracking.experiment, parent_run_id)
    for trial in trials:
        run_id = runs.get(f"{cfg.run_name}-trial{trial['trial_id'].rsplit('_', 1)[-1]}")
        if trial["stopped_early"] and run_id:
            tracking.mark_stopped_early(cfg.tracking_uri, run_id, trial["steps"])
    tracking.finish_run(cfg.tracking_uri, parent_run_id,
                        metrics={f"best_{k}": v for k, v in best["metrics"].items()},
                        step=best["steps"], artifacts={"search": result_path.parent / "plots",
                                                       "search/result": result_path})


def say(line: str) -> None:
    print(f"raylora tune: {line}", flush=True)


class TrialProgress(Callback):
    """One line per trial event on the terminal (Tune's own table is off: verbose=0)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        say(f"{trial.trial_id} started: {trial.config}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.metric in result and TRAIN_RESULT_KEY not in result:
            say(f"{trial.trial_id} step {result.get('step')}: {self.metric} {result[self.metric]:.4f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        say(f"{trial.trial_id} {'trained to the end' if TRAIN_RESULT_KEY in last else 'stopped early'} at step "
            f"{last.get('step')}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        say(f"{trial.trial_id} failed, the search goes on: its error is in {trial.local_path}")
