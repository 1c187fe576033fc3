"""Shared fixtures: one local Ray cluster per test session, the tiny model, the sample data, one trained adapter.

A test's tier follows from what it starts, and what it starts from the fixtures it uses (directly or through
other fixtures): ``FIXTURE_MARKERS`` marks it, and the Makefile's tiers select by those marks.

    make test-fast   # -m "not (ray_train or server or slow)": no Ray Train run, no search, no study, no server
    make test        # -m "not slow": what CI runs
    make test-all    # everything: every study, the slow variants
"""

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
# Ray Train's controller polls its workers every 2 s and notices a finished run only at the next poll; the suite's
# runs are a few seconds of training each, so that wait is a share of them (the dora-zero3 two-worker test: 37 to 40 s
# at 2 s, 35.5 s at 0.2 s). The driver passes the variable on to the controller, and the jobs and subprocesses the
# tests start inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


# fixture -> the markers of every test that uses it (the markers are described in pyproject.toml)
FIXTURE_MARKERS = {
    "ray_local": ("ray",),
    "ray_train": ("ray", "ray_train"),
    "ray_train_of_its_own": ("ray", "ray_train"),
    "mlflow_server": ("server",),
    "head": ("server", "ray", "ray_train"),
}


def pytest_collection_modifyitems(config, items):
    """Marks each test by the fixtures it uses; gpu tests skip where CUDA is not there."""
    import torch

    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA")
    for item in items:
        for marker in sorted({m for name in getattr(item, "fixturenames", ()) for m in FIXTURE_MARKERS.get(name, ())}):
            item.add_marker(marker)
        if skip and "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole session (2 CPUs, no dashboard); tests share it."""
    import ray

    from pipelines.console import stop_relaying

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    yield ray
    stop_relaying()  # as the CLI does: the relay's thread must not poll a cluster that is going away
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_train(ray_local):
    """The session's cluster, for a test that runs Ray Train (a train, tune, study or run command)."""
    return ray_local


@pytest.fixture(scope="session")
def ray_train_of_its_own():
    """For a test whose command trains on a Ray cluster it starts itself, in a subprocess: nothing to set up
    here, the fixture says what the test starts so that its tier follows."""


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


@dataclass(frozen=True)
class TrainedAdapter:
    config: dict  # the config that trained it: its own workdir, the session's curated data, register keys
    result: Path  # its TrainResult JSON
    adapter: Path
    curated: Path  # the session's curated data (manifest.json beside the Parquet files)


@pytest.fixture(scope="session")
def trained_lora(ray_train, demo_config_base, curated_manifest, tiny_model_path, tmp_path_factory) -> TrainedAdapter:
    """One real LoRA train run (one worker, 8 short steps) on the session's curated data, shared by every test
    that needs a trained adapter and not a particular run: generate, export, register, the registered model."""
    from pipelines.artifacts import read_curated_manifest
    from pipelines.config import validate_config
    from pipelines.train import train

    workdir = tmp_path_factory.mktemp("trained-lora")
    raw = copy.deepcopy(demo_config_base)
    raw.update(workdir=str(workdir), run_name="trained-lora")
    curated = Path(curated_manifest.train_paths[0]).parent
    (workdir / "curated").symlink_to(curated)  # read where this workdir keeps its curated data
    raw["curate"] = {**raw.get("curate", {}), "output_dir": "curated"}
    raw["model"] = {**raw["model"], "max_seq_len": 128}
    raw["train"] = {**raw["train"], "max_steps": 8, "micro_batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0,
                    "eval_every": 8, "checkpoint_every": 8, "eval_generate_limit": 4, "eval_max_new_tokens": 4}
    raw["cluster"] = {**raw["cluster"], "num_workers": 1, "cpus_per_worker": 1}
    raw["register"] = {**raw.get("register", {}), "max_new_tokens": 8}
    cfg = validate_config(raw)
    result = train(cfg, read_curated_manifest(cfg, "the shared trained adapter"))
    result_path = cfg.path("train", cfg.run_name, result.fingerprint, "train_result.json")
    return TrainedAdapter(config=raw, result=Path(result_path), adapter=Path(result.adapter_path), curated=curated)
