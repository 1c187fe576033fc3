"""A run's fingerprint changes exactly with what shapes its result."""

import pytest

from pipelines.config import validate_config
from pipelines.fingerprint import record_last_run, train_fingerprint

DATA = {"train": "t" * 64, "eval": "e" * 64}


def digest(demo_config_dict, overrides: dict, data=DATA) -> str:
    raw = {**demo_config_dict}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw[section] = {**raw.get(section, {}), key: value}
    return train_fingerprint(validate_config(raw), data).digest


RESULT_SHAPING = [
    ("train.lr", 1e-4), ("adapter.r", 16), ("adapter.method", "dora"), ("cluster.num_workers", 2),
    ("train.max_steps", 10), ("model.revision", "v2"), ("train.export", "last"), ("train.seed", 3),
]
RESULT_NEUTRAL = [
    ("train.log_every", 3), ("train.eval_every", 7), ("train.eval_generate_limit", 2), ("train.keep_checkpoints", 5),
    ("tracking.experiment", "other"), ("cluster.max_failures", 4), ("cluster.cpus_per_worker", 0.5),
    ("model.config_file", "configs/models/llama-3.1-8b.json"),
]


@pytest.mark.parametrize(("key", "value"), RESULT_SHAPING)
def test_a_result_shaping_key_changes_the_fingerprint(demo_config_dict, key, value):
    assert digest(demo_config_dict, {key: value}) != digest(demo_config_dict, {})


@pytest.mark.parametrize(("key", "value"), RESULT_NEUTRAL)
def test_logging_eval_cadence_and_tracking_do_not(demo_config_dict, key, value):
    assert digest(demo_config_dict, {key: value}) == digest(demo_config_dict, {})


def test_the_run_name_and_the_data_hashes(demo_config_dict):
    base = digest(demo_config_dict, {})
    assert digest({**demo_config_dict, "run_name": "other"}, {}) == base, "the name keys the folder, not the hash"
    assert digest(demo_config_dict, {}, {**DATA, "eval": "x" * 64}) != base
    assert digest(demo_config_dict, {}, {**DATA, "train": "x" * 64}) != base


def test_the_last_run_record_says_what_changed(demo_config_dict, tmp_path):
    first = train_fingerprint(validate_config(demo_config_dict), DATA)
    assert record_last_run(tmp_path, first) is None
    assert record_last_run(tmp_path, first) is None, "the same fingerprint again: nothing changed"
    raw = {**demo_config_dict, "train": {**demo_config_dict["train"], "lr": 1e-4}}
    second = train_fingerprint(validate_config(raw), DATA)
    line = record_last_run(tmp_path, second)
    assert line == (f"config changed since run {first.digest} (train.lr: 0.001 -> 0.0001): new run "
                    f"{second.digest}, the old run is kept")
