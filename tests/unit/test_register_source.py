"""Which adapter `raylora register` takes with no --from: the newest finished result of run_name, not the run
started last; a newer run that has not finished is named in one line (issue 34)."""

from __future__ import annotations

import json
import os

import pytest

from pipelines.artifacts import TrainResult
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.fingerprint import LAST_RUN_FILE
from pipelines.register.stage import find_source


@pytest.fixture
def cfg(tmp_path):
    return load_config("configs/demo.yaml", [f"workdir={tmp_path}"])


def finished_run(cfg, fingerprint: str, at: float) -> None:
    directory = cfg.path("train", cfg.run_name, fingerprint)
    directory.mkdir(parents=True)
    TrainResult(run_name=cfg.run_name, adapter_path=str(directory / "adapter"), base_model="tiny", metrics={},
                checkpoint_path=None, mlflow_run_id=None, train_hash="t", eval_hash="e", fingerprint=fingerprint,
                config={}).write(directory / "train_result.json")
    os.utime(directory / "train_result.json", (at, at))


def started_run(cfg, fingerprint: str, at: float) -> None:
    path = cfg.path("train", cfg.run_name, LAST_RUN_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint, "inputs": {}}))
    os.utime(path, (at, at))


def test_the_newest_finished_run_is_taken_and_a_newer_unfinished_one_is_named(cfg, capsys):
    finished_run(cfg, "aaaaaaaaaaaa", at=1_000)
    finished_run(cfg, "bbbbbbbbbbbb", at=2_000)
    started_run(cfg, "cccccccccccc", at=3_000)  # failed, interrupted or running: no train_result.json
    assert find_source(cfg).train_result.fingerprint == "bbbbbbbbbbbb"
    assert capsys.readouterr().out == (
        "raylora register: the latest run of demo (cccccccccccc) has not finished (it failed, was interrupted or is "
        f"running); registering the newest finished one, {cfg.path('train', 'demo', 'bbbbbbbbbbbb', 'train_result.json')}\n")


def test_a_rerun_of_an_older_finished_config_is_taken_without_a_word(cfg, capsys):
    finished_run(cfg, "aaaaaaaaaaaa", at=1_000)
    finished_run(cfg, "bbbbbbbbbbbb", at=2_000)
    started_run(cfg, "aaaaaaaaaaaa", at=3_000)  # `raylora train` with the first config again: already finished
    assert find_source(cfg).train_result.fingerprint == "bbbbbbbbbbbb"
    assert capsys.readouterr().out == ""


def test_only_an_unfinished_run_is_an_error_that_says_to_resume_it(cfg):
    started_run(cfg, "cccccccccccc", at=3_000)
    with pytest.raises(ConfigError, match=r"run cccccccccccc started but has not finished: rerun `raylora train` "
                                          "to resume it"):
        find_source(cfg)
