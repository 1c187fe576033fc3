"""Two nodes simulated with ray.cluster_utils.Cluster: curation tasks run on both, and a 2-worker training run
spreads its workers over them (issue 16).

    PYTHONPATH=$PWD python -m pytest tests/integration/test_two_nodes.py -q
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# a slow variant (`make test-all`): every two-worker run in `make test` spreads its workers over the processes of
# one node; this one adds Ray's placement over two simulated nodes, at the price of a cluster of its own
@pytest.mark.slow
def test_curation_and_training_use_both_nodes(ray_train_of_its_own, demo_config_base, sample_data, tmp_path):
    raw = {**json.loads(json.dumps(demo_config_base)), "workdir": str(tmp_path / "work"), "run_name": "two-nodes"}
    for source in raw["data"]["sources"]:
        head = tmp_path / Path(source["path"]).name
        head.write_bytes(b"\n".join(Path(source["path"]).read_bytes().split(b"\n")[:300]) + b"\n")
        source["path"] = str(head)
    raw["model"]["max_seq_len"] = 128
    raw["train"].update(max_steps=4, micro_batch_size=4, eval_every=4, checkpoint_every=4, eval_generate_limit=2,
                        eval_max_new_tokens=2)
    # one CPU a node and a worker a CPU: STRICT_SPREAD says what the resources force anyway, one worker a node
    raw["cluster"] = {"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD"}
    config = tmp_path / "two-nodes.yaml"
    config.write_text(yaml.safe_dump(raw))
    # RAY_ADDRESS unset: the run joins the cluster it makes, not another one on this machine
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(HERE.parents[1]), TOKENIZERS_PARALLELISM="false")
    # in a session of its own: the cluster's daemons share its process group, stopped with it if the run dies
    run = subprocess.Popen([sys.executable, str(HERE / "two_nodes_run.py"), str(config), str(free_port())],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = run.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads(next(line for line in stdout.splitlines() if line.startswith("TWO_NODES "))[10:])
    assert len(report["nodes"]) == 2
    assert set(report["curation_task_nodes"]) == set(report["nodes"])
    assert sorted(report["train_worker_nodes"]) == sorted(report["nodes"])
    assert report["metrics"]["step"] == 4 and report["metrics"]["eval_loss"] > 0
