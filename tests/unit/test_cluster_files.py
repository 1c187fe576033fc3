"""The cluster files hold together: the launcher YAML (head plus GPU workers) and the KubeRay RayJob run raylora's
own entrypoint on a recipe that exists and fits the GPUs they ask for, with Ray 2.60, torch pinned as the Makefile
pins it, and token authentication on.

    .venv/bin/python -m pytest tests/unit/test_cluster_files.py -q
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config

REPO = Path(__file__).resolve().parents[2]
RAY_IMAGE = re.compile(r"^rayproject/ray:2\.60\.\d+-py311-gpu$")


def makefile_torch_pin() -> str:
    found = re.search(r"^TORCH := (torch==\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile pins torch"
    return found.group(1)


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())


def test_launcher_has_a_head_without_gpus_and_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"] == {"GPU": 0}
    assert head["node_config"]["InstanceType"].startswith("m5.")  # an instance type without GPUs
    workers = {name: spec for name, spec in types.items() if name != launcher["head_node_type"]}
    assert {name: spec["resources"]["GPU"] for name, spec in workers.items()} == {"gpu_a10g": 4, "gpu_a100": 8}
    assert {spec["node_config"]["InstanceType"] for spec in workers.values()} == {"g5.12xlarge", "p4d.24xlarge"}
    assert all(spec["min_workers"] == 0 for spec in workers.values())  # GPUs only while a job wants them
    assert sum(spec["max_workers"] for spec in workers.values()) == launcher["max_workers"]
    assert any(spec["resources"]["GPU"] * spec["max_workers"] >= 8 for spec in workers.values())  # the 8B recipes


def test_launcher_installs_the_project_on_ray_2_60_with_token_auth(launcher):
    assert RAY_IMAGE.match(launcher["docker"]["image"])
    assert launcher["provider"]["type"] == "aws"
    assert launcher["file_mounts"]["~/raylora"] == "."
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert {".git", ".venv"} <= set(launcher["rsync_exclude"]) and launcher["rsync_filter"] == [".gitignore"]
    assert launcher["setup_commands"] == [f"pip install -q {makefile_torch_pin()}", "pip install -q -e ~/raylora"]
    head_start, worker_start = launcher["head_start_ray_commands"][-1], launcher["worker_start_ray_commands"][-1]
    assert head_start.startswith("export RAY_AUTH_MODE=token && ") and worker_start.startswith(
        "export RAY_AUTH_MODE=token && ")
    assert "ray start --head" in head_start and "--num-gpus=0" in head_start and "--dashboard-port=8265" in head_start
    assert "--dashboard-host" not in head_start  # the dashboard stays on the head; `ray dashboard` forwards it
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start


def test_rayjob_runs_raylora_run_on_a_recipe_that_fits_its_gpu_workers(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["raylora", "run"] and len(command) == 3
    recipe = REPO / command[2]
    assert recipe.parent == REPO / "configs" and recipe.is_file()
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": "/home/ray/raylora"}
    cfg = load_config(recipe)
    assert cfg.cluster.use_gpu and cfg.train.deepspeed.stage == 3

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources["requests"] and "nvidia.com/gpu" not in head_resources["limits"]

    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == int(worker["resources"]["requests"]["nvidia.com/gpu"]) == 4
    # the recipe's Ray Train workers fit: all of them on the group's GPUs, each pod's share on its CPUs
    assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] == 2
    assert cfg.cluster.num_workers * cfg.cluster.gpus_per_worker == group["replicas"] * gpus
    workers_per_pod = gpus / cfg.cluster.gpus_per_worker
    assert workers_per_pod * cfg.cluster.cpus_per_worker <= int(worker["resources"]["limits"]["cpu"])


def test_rayjob_keeps_token_auth_on_for_every_container(rayjob):
    spec = rayjob["spec"]
    containers = [spec["submitterPodTemplate"]["spec"]["containers"][0],
                  spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
                  spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]]
    for container in containers:
        env = {item["name"]: item for item in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "raylora-ray-token", "key": "auth_token"}}
    assert len({container["image"] for container in containers}) == 1  # one image, built by cluster/Dockerfile


def test_the_image_is_ray_2_60_with_torch_pinned_and_the_project_installed():
    lines = [line for line in (REPO / "cluster" / "Dockerfile").read_text().splitlines()
             if line and not line.startswith("#")]
    assert RAY_IMAGE.match(lines[0].removeprefix("FROM "))
    assert lines[1:] == [f"RUN pip install --no-cache-dir {makefile_torch_pin()}",
                         "COPY --chown=ray:users . /home/ray/raylora",
                         "RUN pip install --no-cache-dir -e /home/ray/raylora",
                         "WORKDIR /home/ray/raylora"]
    ignored = (REPO / "cluster" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", ".raylora", "mlruns", "mlflow.db"} <= set(ignored)
