"""Shared fixtures: one local Ray cluster per test session, the tiny model, the sample data."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """gpu tests skip where CUDA is not there."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole session (2 CPUs, no dashboard); tests share it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def deepspeed_world_of_one():
    """torch.distributed over gloo with one rank, as a launcher would set it up. Once per session and
    shared: DeepSpeed caches its process groups and cannot be initialised again in the same process."""
    import socket

    import deepspeed
    import torch

    from pipelines.train.build_locks import clear_stale_build_locks

    clear_stale_build_locks()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.MonkeyPatch.context() as env:
        for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                               LOCAL_RANK="0").items():
            env.setenv(key, value)
        deepspeed.init_distributed(dist_backend="gloo")
        yield deepspeed
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The offline tiny base model (built once, cached under RAYLORA_CACHE)."""
    from pipelines.demo.assets import tiny_model_path as build

    return build()


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> dict[str, Path]:
    """The default sample data set, generated once for the session."""
    from pipelines.demo import sample_data

    return sample_data.generate(tmp_path_factory.mktemp("sample-data"), seed=0)


@pytest.fixture(scope="session")
def demo_config_base(sample_data) -> dict:
    """configs/demo.yaml pointed at the session's sample data (no workdir of its own yet)."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["data"]["sources"] = [
        {"path": str(sample_data[fmt]), "format": fmt} for fmt in ("alpaca", "sharegpt", "openai")
    ]
    raw["data"]["eval_sets"] = [str(sample_data["eval"])]
    return raw


@pytest.fixture
def demo_config_dict(demo_config_base, tmp_path) -> dict:
    """configs/demo.yaml pointed at the session's sample data and a per-test workdir."""
    return {**copy.deepcopy(demo_config_base), "workdir": str(tmp_path / "work")}


@dataclass(frozen=True)
class CuratedBySession:
    workdir: Path
    config: dict  # the demo config with this workdir
    report: str  # what `raylora curate` printed


@pytest.fixture(scope="session")
def curated_by_stage(ray_local, demo_config_base, tmp_path_factory) -> CuratedBySession:
    """What `raylora curate` wrote for the sample data, once per session: the curate and train stages tested
    together, and the curation targets checked on it."""
    import contextlib
    import io

    import yaml

    from pipelines.cli import EXIT_OK, main

    workdir = tmp_path_factory.mktemp("curated-by-the-stage")
    raw = {**copy.deepcopy(demo_config_base), "workdir": str(workdir)}
    (workdir / "curate.yaml").write_text(yaml.safe_dump(raw))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["curate", str(workdir / "curate.yaml")]) == EXIT_OK
    return CuratedBySession(workdir=workdir, config=raw, report=printed.getvalue())


@pytest.fixture(scope="session")
def curated_manifest(sample_data, tmp_path_factory):
    """A DatasetManifest of the sample data's clean rows in the curated Parquet shape (what `raylora curate`
    writes): train = the clean rows of alpaca / sharegpt / openai, eval = the held-out eval set."""
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.artifacts import DatasetManifest
    from pipelines.curate.formats import to_messages
    from pipelines.demo.sample_data import read_labels

    out = tmp_path_factory.mktemp("curated")
    clean = {lab["id"] for lab in read_labels(sample_data["labels"]) if lab["kind"] == "clean"}
    train_rows = []
    for fmt in ("alpaca", "sharegpt", "openai"):
        for line in sample_data[fmt].read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("id") in clean:
                train_rows.append({"id": row["id"], "source": fmt, "messages": to_messages(row, fmt)})
    eval_rows = [{"id": r["id"], "source": "eval", "messages": r["messages"]}
                 for r in map(json.loads, sample_data["eval"].read_text().splitlines())]
    paths = {}
    for split, rows in (("train", sorted(train_rows, key=lambda r: r["id"])), ("eval", eval_rows)):
        paths[split] = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), paths[split])
    def digest(rows: list[dict]) -> str:
        return hashlib.sha256(json.dumps(sorted(r["id"] for r in rows)).encode()).hexdigest()

    manifest = DatasetManifest(
        train_paths=[str(paths["train"])], eval_paths=[str(paths["eval"])], dropped_paths=[],
        num_read=len(train_rows) + len(eval_rows), num_train=len(train_rows), num_eval=len(eval_rows), num_dropped=0,
        dropped_by_reason={}, per_source={}, train_hash=digest(train_rows), eval_hash=digest(eval_rows), config={},
    )
    manifest.write(out / "manifest.json")
    return manifest
