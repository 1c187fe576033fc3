"""The alias lock and the champion's record on a real local SQLite registry; the CLI's one-line refusals."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from pipelines.cli import EXIT_USAGE, main
from pipelines.errors import StageError
from pipelines.register.alias_lock import LOCK_SUFFIX, OWNER_TAG, AliasLock
from pipelines.tracking import Registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    return Registry(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}")


def test_a_second_holder_waits_and_gets_the_lock_once_it_is_released(registry):
    with AliasLock(registry, "m1", ttl_s=60, wait_s=5) as first:
        assert registry.model_tags("m1" + LOCK_SUFFIX)[OWNER_TAG] == first.owner
        first.check_held()
        with pytest.raises(StageError, match="stayed held by .* raise register.lock_wait_s"):
            AliasLock(registry, "m1", ttl_s=60, wait_s=0.5).__enter__()
    with AliasLock(registry, "m1", ttl_s=60, wait_s=5) as second:
        assert registry.model_tags("m1" + LOCK_SUFFIX)[OWNER_TAG] == second.owner
    assert second.holder() is None, "released on exit"


def test_an_expired_lock_is_taken_over_and_its_old_holder_moves_no_alias(registry, capsys):
    crashed = AliasLock(registry, "m2", ttl_s=0.3, wait_s=5).__enter__()  # never released: its holder died
    time.sleep(0.5)
    with AliasLock(registry, "m2", ttl_s=60, wait_s=5) as taker:
        assert taker.holder() == taker.owner
        with pytest.raises(StageError, match="lost the alias lock"):
            crashed.check_held()
        crashed.__exit__(None, None, None)  # the late holder leaves the new lock alone
        assert taker.holder() == taker.owner
    assert "expired; taking it over" in capsys.readouterr().out


@pytest.fixture
def config_file(demo_config_dict, tmp_path):
    """The demo config; MLflow's own logs kept to warnings, as ``raylora`` keeps them in a fresh process
    (here MLflow was imported before the CLI could say so)."""
    import logging

    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)
    path = tmp_path / "register.yaml"
    path.write_text(yaml.safe_dump(demo_config_dict))
    yield path
    mlflow_logger.setLevel(level)


@pytest.mark.parametrize(("argv", "message"), [
    (["promote", "{cfg}", "3", "--reason", "x", "register.model_name=ghost"],
     "registered model 'ghost' does not exist: check register.model_name"),
    (["rollback", "{cfg}", "register.model_name=ghost"], "registered model 'ghost' does not exist"),
    (["register", "{cfg}"], "no trained adapter for run_name=demo"),
    (["register", "{cfg}", "--from", "{cfg}.missing.json"], "does not exist: pass a TrainResult or TuneResult"),
])
def test_nothing_to_act_on_exits_2_with_one_line(config_file, capsys, argv, message):
    assert main([a.format(cfg=config_file) for a in argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_promote_needs_a_reason(config_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["promote", str(config_file), "3"])
    assert exit_info.value.code == EXIT_USAGE
    assert "--reason" in capsys.readouterr().err


def test_the_champion_history_is_kept_on_the_model(registry):
    from pipelines.register.aliases import CHAMPION_HISTORY_TAG, champion_history, set_champion_history

    registry.create_model("m3", {})
    set_champion_history(registry, "m3", [str(v) for v in range(300)])
    kept = champion_history(registry, "m3")
    assert kept[-1] == "299" and len(kept) == 200
    assert json.loads(registry.model_tags("m3")[CHAMPION_HISTORY_TAG]) == kept
