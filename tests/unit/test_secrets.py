"""Secrets in a config are redacted wherever raylora writes the config down (issue 34)."""

import pytest
from mlflow.tracking import MlflowClient
from planted import PLANTED_SECRET, RUNTIME_ENV_WITH_SECRET

from pipelines import tracking
from pipelines.cli import EXIT_OK, EXIT_USAGE, main
from pipelines.config import load_config
from pipelines.config.secrets import REDACTED, is_secret_key, redact
from pipelines.fingerprint import train_fingerprint

SECRET_KEYS = [  # (path from the config's root, secret?)
    (("cluster", "runtime_env", "env_vars", "HF_TOKEN"), True),
    (("cluster", "runtime_env", "env_vars", "PLAIN_NAME"), True),  # every env var: its name may give nothing away
    (("cluster", "runtime_env", "config", "hf_token"), True),
    (("cluster", "runtime_env", "secrets", "x"), True),
    (("a", "WANDB_API_KEY"), True),
    (("a", "apiKey"), True),
    (("a", "aws_secret_access_key"), True),
    (("a", "db-password"), True),
    (("register", "max_new_tokens"), False),
    (("train", "eval_max_new_tokens"), False),
    (("curate", "max_tokens"), False),
    (("data", "tokenizer"), False),
    (("cluster", "runtime_env", "env_vars"), False),  # the section itself: its values are
    (("cluster", "runtime_env", "pip"), False),
]


@pytest.mark.parametrize(("path", "secret"), SECRET_KEYS, ids=[".".join(p) for p, _ in SECRET_KEYS])
def test_which_keys_are_secrets(path, secret):
    assert is_secret_key(path) is secret


def test_redact_replaces_values_only_of_secret_keys_and_keeps_the_shape():
    data = {"cluster": {"runtime_env": {"env_vars": {"A": "x", "B": "y"}, "pip": ["peft"]}, "num_workers": 2},
            "train": {"lr": 0.1}, "extra": [{"token": "t", "name": "n"}], "unset_key": None}
    assert redact(data) == {
        "cluster": {"runtime_env": {"env_vars": {"A": REDACTED, "B": REDACTED}, "pip": ["peft"]}, "num_workers": 2},
        "train": {"lr": 0.1}, "extra": [{"token": REDACTED, "name": "n"}], "unset_key": None}


@pytest.fixture
def config_with_secret(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text((__import__("pathlib").Path(__file__).parents[2] / "configs" / "demo.yaml").read_text())
    overrides = [f"workdir={tmp_path / 'work'}",
                 f"cluster.runtime_env={{env_vars: {RUNTIME_ENV_WITH_SECRET['env_vars']}}}"]
    return path, overrides


def test_the_job_gets_the_value_and_every_printed_config_the_mask(config_with_secret, capsys):
    path, overrides = config_with_secret
    cfg = load_config(path, overrides)
    assert cfg.cluster.runtime_env == RUNTIME_ENV_WITH_SECRET  # what ray.init and the job submission receive
    for argv in (["config", str(path), *overrides], ["config", str(path), *overrides, "--explain"]):
        assert main(argv) == EXIT_OK
        out = capsys.readouterr().out
        assert PLANTED_SECRET not in out and REDACTED in out


def test_a_new_token_is_not_a_new_run(config_with_secret):
    path, overrides = config_with_secret
    first = train_fingerprint(load_config(path, overrides), {"train": "h"})
    other = train_fingerprint(load_config(path, [*overrides, "cluster.runtime_env.env_vars.HF_TOKEN=hf_other"]),
                              {"train": "h"})
    assert first.digest == other.digest and PLANTED_SECRET not in str(first.inputs)


def test_mlflow_params_are_redacted_whoever_logs_them(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.create_run(uri, "e", "r", tags={})
    tracking.log_params(uri, run_id, {"cluster": {"runtime_env": {"env_vars": {"HF_TOKEN": PLANTED_SECRET}}},
                                      "train": {"lr": 0.1}})
    params = MlflowClient(uri).get_run(run_id).data.params
    assert params == {"cluster.runtime_env.env_vars.HF_TOKEN": REDACTED, "train.lr": "0.1"}


@pytest.mark.parametrize("key", ["tracking.tracking_uri", "register.registry_uri"])
def test_a_password_in_an_mlflow_uri_is_refused_with_the_way_to_pass_it(config_with_secret, key, capsys):
    path, overrides = config_with_secret
    assert main(["config", str(path), *overrides, f"{key}=https://bob:{PLANTED_SECRET}@mlflow.example/"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{key}: holds a password" in err and "MLFLOW_TRACKING_PASSWORD" in err
