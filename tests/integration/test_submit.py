"""``raylora submit`` and ``raylora jobs`` against a real Ray head started here (``ray start --head`` on 127.0.0.1,
token authentication on, its own ports and temp dir): a small config runs end to end as a job and its registered
model then loads by alias; a job that fails reports its error; a job submitted with --no-wait is stopped; an address
where nothing listens, a missing token and a bad config fail before anything is submitted.

    .venv/bin/python -m pytest tests/integration/test_submit.py -q

The test process talks to the head over HTTP only (the Jobs API); it never joins that cluster, so the session's
own local Ray (tests/conftest.py ray_local) may run beside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from planted import PLANTED_SECRET, files_holding

from pipelines.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str  # the dashboard: what `raylora submit --address` takes
    token: str  # the cluster's auth token


def processes_of(group: int) -> list[psutil.Process]:
    """Every process in the process group ``ray start`` led, and their descendants (a job's entrypoint runs in
    a session of its own under the head's workers)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == group:
                members.append(proc)
    for proc in list(members):
        with contextlib.suppress(psutil.Error):
            members += proc.children(recursive=True)
    return list({proc.pid: proc for proc in members}.values())


def stop_head(group: int) -> None:
    """Stop what this head started, by pid (``ray stop`` would stop every Ray on the machine)."""
    procs = processes_of(group)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive:  # gcs_server and the raylet may outlive SIGTERM
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def head() -> Head:
    """A one-node Ray cluster with its dashboard (the Jobs API) on 127.0.0.1 and token auth on. ``ray start``
    runs in a session of its own, so the daemons it leaves share its process group, which is how they are
    stopped. The temp dir is short: Ray's socket paths under it must stay under 108 characters."""
    temp_dir = tempfile.mkdtemp(prefix="rl-head-", dir="/tmp")
    dashboard_port = free_port()
    token = secrets.token_hex(16)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
        # Ray otherwise swaps 127.0.0.1 for the machine's address and binds its agents there
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}",  # the job's `python` is this environment's
    )
    starter = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
         "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = starter.communicate(timeout=300)
        assert starter.returncode == 0, output[-4000:]
        yield Head(f"http://127.0.0.1:{dashboard_port}", token)
    finally:
        stop_head(starter.pid)  # the id of the group `ray start` led
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def client_env(monkeypatch, request):
    """The client's environment: the head's token as a user would export it, no stray Ray address."""
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    if "head" in request.fixturenames:
        monkeypatch.setenv("RAY_AUTH_TOKEN", request.getfixturevalue("head").token)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, Path]:
    """The sample data at a tenth of the demo's size, so a whole run fits in a test."""
    from pipelines.demo import sample_data

    return sample_data.generate(tmp_path_factory.mktemp("submit-data"), seed=0, n_clean=200, n_eval=40)


def small_config(directory: Path, sample: dict[str, Path], run_name: str, **sections) -> Path:
    """configs/demo.yaml cut down to a short run (no search, 8 steps), every path absolute: the job runs in a
    copy of the project, and the test reads the same workdir and MLflow store afterwards."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())
    raw.update(run_name=run_name, workdir=str(directory / "work"))
    raw["data"] = {**raw["data"], "sources": [{"path": str(sample[fmt]), "format": fmt}
                                              for fmt in ("alpaca", "sharegpt", "openai")],
                   "eval_sets": [str(sample["eval"])]}
    raw["tune"] = {**raw["tune"], "enabled": False}
    raw["model"] = {**raw["model"], "max_seq_len": 128}
    raw["train"] = {**raw["train"], "max_steps": 8, "micro_batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0,
                    "eval_every": 8, "checkpoint_every": 8, "eval_generate_limit": 4, "eval_max_new_tokens": 4}
    raw["register"] = {**raw["register"], "model_name": run_name, "max_new_tokens": 8}
    raw["tracking"] = {"tracking_uri": f"sqlite:///{directory / 'mlflow.db'}"}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    path = directory / f"{run_name}.yaml"  # outside the project: the config travels with the job
    path.write_text(yaml.safe_dump(raw))
    return path


def raylora(*argv: str) -> tuple[int, str, str]:
    """``raylora ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def submitted_id(stdout: str) -> str:
    found = re.search(r"submitted job (\S+) to ", stdout)
    assert found, stdout
    return found.group(1)


def jobs_client(head: Head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {head.token}"})


def job_ids(head: Head) -> set[str]:
    return {job.submission_id for job in jobs_client(head).list_jobs()}


def test_an_address_where_nothing_listens_fails_within_seconds():
    address = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, _, err = raylora("jobs", "--address", address, "status", "raylora-demo-00000000")
    assert code == EXIT_USAGE
    assert time.monotonic() - started < 10
    assert err.strip() == (f"raylora jobs: nothing answers at {address} (Connection refused): start the head "
                           "(ray start --head --include-dashboard=true) or pass its dashboard address, e.g. "
                           "--address http://HEAD:8265")


def test_a_missing_token_or_a_bad_config_submits_nothing(head, small_data, tmp_path, monkeypatch):
    config = small_config(tmp_path, small_data, "not-submitted")
    before = job_ids(head)

    code, _, err = raylora("submit", str(config), "train.max_stepz=8", "--address", head.address)
    assert code == EXIT_USAGE
    assert "train.max_stepz: unknown key; did you mean 'max_steps'?" in err

    monkeypatch.delenv("RAY_AUTH_TOKEN")
    code, _, err = raylora("submit", str(config), "--address", head.address)
    assert code == EXIT_USAGE
    assert f"the cluster at {head.address} wants its token: " in err and "export RAY_AUTH_TOKEN=" in err
    assert job_ids(head) == before


def test_submit_runs_the_pipeline_as_a_job_and_the_model_loads_by_alias(head, small_data, tiny_model_path,
                                                                         tmp_path):
    config = small_config(tmp_path, small_data, "submitted",
                          cluster={"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    secret = f"cluster.runtime_env.env_vars.HF_TOKEN={PLANTED_SECRET}"
    code, out, err = raylora("submit", str(config), "train.max_steps=4", secret, "--address", head.address)
    job_id = submitted_id(out)
    assert code == EXIT_OK, out[-4000:] + err[-4000:]
    assert job_id.startswith("raylora-submitted-")
    # the job's own output, streamed: the stages and the summary of `raylora run`
    assert "python -m pipelines.cli run raylora-job/submitted.yaml train.max_steps=4 'cluster.runtime_env={}'" in out
    assert "== [1/3] curate" in out and "registry  submitted version 1" in out
    assert out.rstrip().endswith(f"job {job_id} SUCCEEDED")

    code, out, _ = raylora("jobs", "--address", head.address, "status", job_id)
    assert (code, out.splitlines()[0]) == (EXIT_OK, f"{job_id}  SUCCEEDED  run submitted")
    code, out, _ = raylora("jobs", "--address", head.address, "logs", job_id)
    assert code == EXIT_OK and "step 4/4" in out and "registry  submitted version 1" in out

    # as a user's client would: a fresh process with only the store's address
    loaded = subprocess.run(
        [sys.executable, "-c", "import json, sys, mlflow; mlflow.set_tracking_uri(sys.argv[1]); print(json.dumps("
         "mlflow.pyfunc.load_model('models:/submitted@champion').predict(['What is 2 + 3?', 'Reverse lamp.'])))",
         store], capture_output=True, text=True, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    answers = json.loads(loaded.stdout.splitlines()[-1])
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)
    # the artifacts lie beside the SQLite store, not in the job's scratch copy of the project
    assert list((tmp_path / "mlartifacts").rglob("adapter_model.safetensors"))
    # the token reached the job through its runtime_env only: not in its command line, not in anything it wrote
    info = jobs_client(head).get_job_info(job_id)
    assert info.runtime_env["env_vars"]["HF_TOKEN"] == PLANTED_SECRET and PLANTED_SECRET not in info.entrypoint
    assert files_holding(PLANTED_SECRET, tmp_path) == []


def test_a_job_that_fails_reports_its_error_and_exits_1(head, small_data, tiny_model_path, tmp_path):
    # the client validates the config; the source is missing only where the job runs (on the cluster)
    config = small_config(tmp_path, small_data, "fails", model={"base": str(tiny_model_path)},
                          data={"sources": [{"path": str(tmp_path / "absent.jsonl"), "format": "alpaca"}]})
    code, out, err = raylora("submit", str(config), "--address", head.address)
    job_id = submitted_id(out)
    assert code == EXIT_FAILURE
    assert f"job {job_id} FAILED: " in err
    assert f"data.sources[0].path={tmp_path / 'absent.jsonl'} does not exist" in err

    code, out, _ = raylora("jobs", "--address", head.address, "status", job_id)
    assert code == EXIT_OK and out.startswith(f"{job_id}  FAILED  run fails\n")


def test_a_job_submitted_without_waiting_is_stopped(head, small_data, tmp_path):
    config = small_config(tmp_path, small_data, "stopped")
    started = time.monotonic()
    code, out, _ = raylora("submit", str(config), "--address", head.address, "--no-wait")
    job_id = submitted_id(out)
    assert code == EXIT_OK and time.monotonic() - started < 60

    code, out, _ = raylora("jobs", "--address", head.address, "stop", job_id)
    assert code == EXIT_OK and out.startswith(f"{job_id}  STOPPED  run stopped")
    code, out, _ = raylora("jobs", "--address", head.address, "status", job_id)
    assert out.startswith(f"{job_id}  STOPPED")

    code, _, err = raylora("jobs", "--address", head.address, "status", "raylora-unknown-00000000")
    assert code == EXIT_USAGE and "the cluster has no job raylora-unknown-00000000" in err
