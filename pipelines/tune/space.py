"""The search as Ray Tune sees it: the points to try, the search algorithm, the scheduler, trials at once."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from pipelines.config import RayloraConfig

DRIVER_CPUS = 0.01  # a trial's driver only waits on its Train run
HOST_CPUS_PER_TRIAL = 1.0  # beside its workers, a trial's data feed and host work need a core


def param_space(cfg: RayloraConfig) -> dict[str, Any]:
    """``tune.search_space`` as Ray Tune domains, keyed by the dotted config keys: what Optuna's TPE samples."""
    from ray import tune

    kinds = {"choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
             "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    return {key: kinds[kind](values) for key, spec in cfg.tune.search_space.items() for kind, values in spec.items()}


def sample(kind: str, values: list, rng: random.Random) -> Any:
    if kind == "choice":
        return rng.choice(values)
    if kind == "uniform":
        return rng.uniform(*values)
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(values[0]), math.log(values[1])))
    return rng.randrange(*values)  # randint: [low, high)


def search_points(cfg: RayloraConfig) -> list[dict[str, Any]]:
    """The points a random or grid search tries, in order, from ``tune.seed``. grid: every combination of the
    choice and grid values, ``num_samples`` times. random: ``num_samples`` samples, each crossed with every
    combination of the ``grid`` keys (Ray Tune's meaning of grid_search beside sampled keys)."""
    space, t = cfg.tune.search_space, cfg.tune
    axes = {k: v for k, spec in space.items() for kind, v in spec.items() if kind == "grid" or t.search == "grid"}
    rng = random.Random(t.seed)
    points = []
    for _ in range(t.num_samples):
        sampled = {k: sample(kind, v, rng) for k, spec in space.items() for kind, v in spec.items() if k not in axes}
        for combo in itertools.product(*axes.values()):
            points.append({**sampled, **dict(zip(axes, combo, strict=True))})
    return points


class PointsSearch(Searcher):
    """random and grid: a fixed, seeded list of points handed out in order, at most ``max_concurrent`` trials
    live at once. Its whole state (points given, trials live) is saved with the experiment, so a restored
    search hands out exactly the points not yet given. (Ray's BasicVariantGenerator, when it limits
    concurrency, generates its variants lazily and on restore starts the grid over: trials run twice.)"""

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: str, max_concurrent: int) -> None:
        super().__init__(metric=metric, mode=mode)
        self.points, self.max_concurrent, self.given, self.live = points, max_concurrent, 0, set()

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.given >= len(self.points):
            return Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        self.given += 1
        self.live.add(trial_id)
        return dict(self.points[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.live.discard(trial_id)

    def get_state(self) -> dict[str, Any]:
        return {"points": self.points, "max_concurrent": self.max_concurrent, "given": self.given,
                "live": sorted(self.live)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.points, self.max_concurrent, self.given = state["points"], state["max_concurrent"], state["given"]
        self.live = set(state["live"])

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


def search_algorithm(cfg: RayloraConfig, at_once: int) -> Any:
    """random and grid: ``PointsSearch`` over ``search_points``; tpe: Optuna's TPE sampler (seeded), which
    Tune limits to ``at_once`` trials."""
    if cfg.tune.search == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(param_space(cfg), metric=cfg.tune.metric, mode=cfg.tune.mode,
                            sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed))
    return PointsSearch(search_points(cfg), cfg.tune.metric, cfg.tune.mode, at_once)


def trial_count(cfg: RayloraConfig) -> int:
    return cfg.tune.num_samples if cfg.tune.search == "tpe" else len(search_points(cfg))


SCHEDULER_STEP = "scheduler_step"  # the step as ASHA sees it: never the last one


def last_scheduler_step(cfg: RayloraConfig) -> int:
    """A trial's reports reach ASHA at most at the step before its last: a decision at the last report would
    stop a trial that has trained to the end before it exports its adapter, and ASHA stops every trial that
    reaches its max_t."""
    return (cfg.train.max_steps or 10**9) - 1


def scheduler(cfg: RayloraConfig) -> Any:
    """ASHA on the metric, by training step (capped, see ``last_scheduler_step``): a trial may be stopped after
    ``grace_period`` evaluations; a trial that trains to the end finishes on its own."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=SCHEDULER_STEP, max_t=last_scheduler_step(cfg) + 1,
                         grace_period=cfg.tune.grace_period * cfg.train.eval_every,
                         reduction_factor=cfg.tune.reduction_factor)


def trials_at_once(cfg: RayloraConfig, cluster: dict[str, float]) -> int:
    """``tune.max_concurrent_trials``, or as many trials as the cluster fits: each needs its workers' CPUs
    (and GPUs) plus one CPU for its feed and host work (on 2 CPUs: one trial at a time)."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    c = cfg.cluster
    fits = math.floor(cluster.get("CPU", 1) / (c.num_workers * c.cpus_per_worker + HOST_CPUS_PER_TRIAL))
    if c.use_gpu:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / (c.num_workers * c.gpus_per_worker)))
    return max(1, fits)
