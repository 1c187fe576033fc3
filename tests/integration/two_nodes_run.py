"""Curate and train on a two-node cluster simulated with ``ray.cluster_utils.Cluster`` (one CPU a node), then
print where Ray ran the work, as JSON. Its own process: a process joins one Ray cluster, and the test session's
is already joined.

    python tests/integration/two_nodes_run.py CONFIG DASHBOARD_PORT
"""

import json
import sys

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from pipelines.config import load_config
from pipelines.console import stop_relaying
from pipelines.curate import curate
from pipelines.train import train


def main(config: str, dashboard_port: int) -> None:
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cfg = load_config(config)
        curated = curate(cfg, quiet=True)
        curation_nodes = {task.node_id for task in list_tasks(
            address=cluster.address, filters=[("type", "=", "NORMAL_TASK")], limit=10_000) if task.node_id}
        result = train(cfg, curated)
        worker_nodes = [actor.node_id for actor in list_actors(
            address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], limit=100)]
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        print("TWO_NODES " + json.dumps({"nodes": nodes, "curation_task_nodes": sorted(curation_nodes),
                                         "train_worker_nodes": worker_nodes, "metrics": result.metrics}), flush=True)
    finally:
        stop_relaying()  # as the CLI does: the relay's thread must not poll a cluster that is going away
        ray.shutdown()
        # Cluster.shutdown refuses the head this driver joined (its stale node handle outlives ray.shutdown)
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node)
        cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=True)
        forget_cluster_address(cluster.address)


def forget_cluster_address(address: str) -> None:
    """Cluster records its head in /tmp/ray/ray_current_cluster, as `ray start` does, and only `ray stop` would
    remove it. Left there, it sends every later process that asks Ray's state API without an address (Ray
    Train's placement-group cleaner does, at the end of every run) to wait 40 s for this dead cluster."""
    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address

    if read_ray_address() == address:
        reset_ray_address()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
