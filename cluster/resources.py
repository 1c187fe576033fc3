"""What a run asks of the cluster, checked against what the cluster has before anything waits for it.

Ray queues a placement group it cannot place and waits for it forever, saying nothing: asked for 4 workers on
2 CPUs, `raylora train` would print its start line and hang. So before a Train run or a search starts:

- impossible (the local cluster this process started, whose nodes can never hold the workers): exit 2 with one
  line naming the numbers and the keys to change;
- possible but not now (busy, or a joined cluster whose autoscaler may add nodes): go on, and while a placement
  group waits, say every ``WAIT_LINE_EVERY_S`` seconds what it waits for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError

WAIT_LINE_EVERY_S = 30.0
FIX = "lower cluster.num_workers or cluster.cpus_per_worker / gpus_per_worker, or join a larger cluster (cluster.address)"


def worker_bundle(cfg: RayloraConfig) -> dict[str, float]:
    """One Train worker's resources, as ``ScalingConfig`` asks for them."""
    bundle = {"CPU": cfg.cluster.cpus_per_worker}
    if cfg.cluster.use_gpu:
        bundle["GPU"] = cfg.cluster.gpus_per_worker
    return bundle


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def started_here(cfg: RayloraConfig) -> bool:
    """Whether this process's cluster is the local one ``ensure_ray`` starts (no ``cluster.address``, no
    ``RAY_ADDRESS``): its nodes are all it will ever have. A joined cluster may have an autoscaler, which Ray's
    public API does not tell, so raylora refuses nothing there and says what a run waits for instead."""
    import os

    return cfg.cluster.address is None and not os.environ.get("RAY_ADDRESS")


def check_resources(cfg: RayloraConfig, what: str, extra: dict[str, float] | None = None) -> None:
    """Refuse (ConfigError, exit 2) a run whose ``cluster.num_workers`` workers, plus ``extra`` beside them (a
    search trial's own actor), can never be placed on the cluster's nodes as they are."""
    if not started_here(cfg):
        return
    nodes, bundle, count = alive_nodes(), worker_bundle(cfg), cfg.cluster.num_workers
    asked = {key: count * amount + (extra or {}).get(key, 0.0) for key, amount in bundle.items()}
    have = {key: sum(node.get(key, 0.0) for node in nodes) for key in asked}
    ask = (f"{what} asks for cluster.num_workers={count} x "
           + " + ".join(f"{amount:g} {key}" for key, amount in bundle.items()) + " per worker")
    for key, amount in bundle.items():
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if amount > largest:
            raise ConfigError(f"{ask}, and no node of the cluster has {amount:g} {key} (the largest has "
                              f"{largest:g}): {FIX}")
    short = [f"{asked[key]:g} {key} (the cluster has {have[key]:g})" for key in asked if asked[key] > have[key] + 1e-9]
    if short:
        raise ConfigError(f"{ask}: {', '.join(short)} in all, on {len(nodes)} node(s): {FIX}")
    if cfg.cluster.placement_strategy == "STRICT_SPREAD":
        hosts = sum(all(node.get(key, 0.0) >= amount for key, amount in bundle.items()) for node in nodes)
        if hosts < count:
            raise ConfigError(f"{ask} on distinct nodes (cluster.placement_strategy=STRICT_SPREAD), and {hosts} of "
                              f"the {len(nodes)} node(s) can hold one: use placement_strategy=PACK or SPREAD, or {FIX}")
    if cfg.cluster.placement_strategy == "STRICT_PACK" and not any(
            all(node.get(key, 0.0) >= asked[key] for key in asked) for node in nodes):
        raise ConfigError(f"{ask} on one node (cluster.placement_strategy=STRICT_PACK), and no node holds "
                          f"{', '.join(f'{v:g} {k}' for k, v in asked.items())}: use placement_strategy=PACK, or {FIX}")


def pending_placement_groups() -> list[dict[str, Any]]:
    """The cluster's placement groups that wait for resources (Ray's table does not say which job made one)."""
    from ray.util import placement_group_table

    return [group for group in placement_group_table().values() if group.get("state") == "PENDING"]


@contextmanager
def waiting_lines(every_s: float = WAIT_LINE_EVERY_S) -> Iterator[None]:
    """While the body runs, one line every ``every_s`` seconds for as long as a placement group waits: what it
    asks for and what the cluster has free."""
    import ray

    stop = threading.Event()

    def watch() -> None:
        waited = 0.0
        while not stop.wait(every_s):
            pending = pending_placement_groups() if ray.is_initialized() else []
            if not pending:
                waited = 0.0
                continue
            waited += every_s
            asked = [bundle for group in pending for bundle in group.get("bundles", {}).values()]
            total = {key: sum(b.get(key, 0.0) for b in asked) for key in ("CPU", "GPU") if any(key in b for b in asked)}
            free = ray.available_resources()
            print(f"raylora: waiting {waited:.0f}s for the cluster to place {len(asked)} worker(s): "
                + ", ".join(f"{v:g} {k} (free now {free.get(k, 0.0):g})" for k, v in total.items())
                + "; another job holds them, or an autoscaler is adding nodes", flush=True)

    thread = threading.Thread(target=watch, name="raylora-resource-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
