"""What ``raylora submit`` sends, before any cluster is involved: the job's working_dir (the project plus the
config, wherever the config lives), its runtime_env merged with ``cluster.runtime_env``, its entrypoint, the
address and the token it uses. The submission itself runs against a real head in
tests/integration/test_submit.py.

    .venv/bin/python -m pytest tests/unit/test_cluster_jobs.py -q
"""

from __future__ import annotations

import pytest

from cluster.jobs import (
    JOB_CONFIG_DIR,
    PROJECT_DIR,
    SHIPPED_EXCLUDES,
    auth_headers,
    dashboard_address,
    job_entrypoint,
    job_runtime_env,
    relative_path_warning,
    stage_working_dir,
)
from pipelines.config import validate_config
from pipelines.errors import ConfigError


@pytest.fixture(autouse=True)
def no_ray_environment(monkeypatch):
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)


MINIMAL = {"data": {"sources": [{"path": "train.jsonl", "format": "alpaca"}]}}


def config(**cluster):
    return validate_config({**MINIMAL, "cluster": cluster})


def test_the_job_ships_the_project_and_a_config_from_anywhere(tmp_path):
    outside = tmp_path / "elsewhere" / "my-run.yaml"
    outside.parent.mkdir()
    outside.write_text("run_name: x\n")
    staging = tmp_path / "staging"
    staging.mkdir()

    assert stage_working_dir(config(), outside, staging) == f"{JOB_CONFIG_DIR}/my-run.yaml"
    assert (staging / JOB_CONFIG_DIR / "my-run.yaml").read_text() == "run_name: x\n"
    linked = {entry.name: entry.resolve() for entry in staging.iterdir() if entry.name != JOB_CONFIG_DIR}
    assert linked == {entry.name: entry.resolve() for entry in PROJECT_DIR.iterdir()}
    assert {"pipelines", "adapters", "cluster", "configs", "pyproject.toml"} <= set(linked)


def test_a_working_dir_of_the_users_replaces_the_project_and_a_uri_is_refused(tmp_path):
    own = tmp_path / "own-project"
    (own / "src").mkdir(parents=True)
    (tmp_path / "run.yaml").write_text("{}\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    stage_working_dir(config(runtime_env={"working_dir": str(own)}), tmp_path / "run.yaml", staging)
    assert sorted(entry.name for entry in staging.iterdir()) == ["raylora-job", "src"]

    with pytest.raises(ConfigError, match=r"cluster.runtime_env.working_dir=s3://bucket/code.zip is not a local "
                                          r"directory; .*give a local directory or drop the key"):
        stage_working_dir(config(runtime_env={"working_dir": "s3://bucket/code.zip"}),
                          tmp_path / "run.yaml", tmp_path)


def test_cluster_runtime_env_is_merged_into_the_jobs(tmp_path):
    cfg = config(runtime_env={
        "pip": ["peft==0.15.2"], "env_vars": {"HF_HOME": "/mnt/hf"}, "working_dir": "/ignored",
        "excludes": ["big/", ".venv"]})
    assert job_runtime_env(cfg, tmp_path) == {
        "pip": ["peft==0.15.2"], "env_vars": {"HF_HOME": "/mnt/hf"},
        "working_dir": str(tmp_path), "excludes": [*SHIPPED_EXCLUDES, "big/"]}
    # nothing installed unless the user asks
    assert job_runtime_env(config(), tmp_path) == {"working_dir": str(tmp_path),
                                                                  "excludes": SHIPPED_EXCLUDES}


def test_the_entrypoint_is_raylora_run_with_the_overrides_quoted():
    assert job_entrypoint("raylora-job/a b.yaml", ["adapter.r=16", "train.lr=1e-4", "run_name=x y"]) == (
        "python -m pipelines.cli run 'raylora-job/a b.yaml' adapter.r=16 train.lr=1e-4 'run_name=x y' "
        "'cluster.runtime_env={}'")


def test_the_entrypoint_leaves_out_overrides_of_the_runtime_env_whose_env_vars_hold_tokens():
    # anyone who lists the cluster's jobs sees the entrypoint; the job's runtime_env carries the values
    overrides = ["cluster.runtime_env.env_vars.HF_TOKEN=hf_x", "cluster.runtime_env={env_vars: {A: b}}", "seed=1"]
    assert job_entrypoint("raylora-job/c.yaml", overrides) == (
        "python -m pipelines.cli run raylora-job/c.yaml seed=1 'cluster.runtime_env={}'")


def test_the_address_comes_from_the_flag_or_rays_variables(monkeypatch):
    assert dashboard_address("http://head:8265/") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://other:8265")
    assert dashboard_address(None) == "http://other:8265"
    assert dashboard_address("http://other:8265") == "http://other:8265"
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=http://other:8265 would override --address "
                                          r"http://head:8265 in Ray's client: unset it, or drop --address"):
        dashboard_address("http://head:8265")
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ConfigError, match=r"^no cluster given: pass --address http://HEAD:8265"):
        dashboard_address(None)
    with pytest.raises(ConfigError, match=r"is not the head's dashboard URL: pass e.g. http://HEAD:8265"):
        dashboard_address("head:6379")


def test_a_token_the_user_gives_is_sent_as_rays_bearer_header(monkeypatch, tmp_path):
    assert auth_headers() == {}  # none given: Ray's client decides (RAY_AUTH_MODE=token sends its own)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert auth_headers() == {"Authorization": "Bearer from-file"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")  # Ray's precedence: the variable before the file
    assert auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"RAY_AUTH_TOKEN_PATH=.*missing cannot be read \(No such file or "
                                          r"directory\): point it at the file holding the cluster's token"):
        auth_headers()


def test_outputs_that_would_stay_on_the_head_are_named():
    assert relative_path_warning(config()).startswith(
        "note: workdir, tracking.tracking_uri (unset: SQLite under workdir) would live in the job's temporary copy")
    shared = validate_config({**MINIMAL, "workdir": "/mnt/shared/raylora",
                              "tracking": {"tracking_uri": "http://mlflow:5000"},
                              "cluster": {"storage_path": "s3://bucket/ray"}})
    assert relative_path_warning(shared) is None
