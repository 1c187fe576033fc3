"""The search space: what a trial's config becomes, and the configs that fail before any trial starts."""

from __future__ import annotations

import copy

import pytest

from pipelines.cli import EXIT_USAGE, main
from pipelines.config import ClusterConfig, validate_config
from pipelines.config.search_space import alpha_from, apply_point
from pipelines.errors import ConfigError
from pipelines.tune.space import PointsSearch, param_space, search_algorithm, search_points, trials_at_once

BASE = {"data": {"sources": [{"path": "x.jsonl"}], "eval_sets": ["eval.jsonl"]}}


def config(**tune):
    return validate_config({**copy.deepcopy(BASE), "tune": tune})


@pytest.mark.parametrize(("value", "r", "expected"), [
    ("2r", 8, 16), ("1r", 4, 4), ("0.5r", 8, 4), (" 4 r ", 16, 64), (32, 8, 32), (None, 8, None),
])
def test_alpha_as_a_multiple_of_the_trials_r(value, r, expected):
    assert alpha_from(value, r) == expected


def test_a_point_sets_dotted_keys_and_resolves_alpha_against_the_points_r():
    raw = {"adapter": {"r": 8, "alpha": None}, "train": {"lr": 1e-3}}
    out = apply_point(raw, {"adapter.r": 16, "adapter.alpha": "2r", "train.lr": 3e-4})
    assert out["adapter"] == {"r": 16, "alpha": 32}
    assert out["train"]["lr"] == 3e-4
    assert raw == {"adapter": {"r": 8, "alpha": None}, "train": {"lr": 1e-3}}  # the base is not changed


# (search space or tune keys, what the one-line error must name)
INVALID = [
    ({"search_space": {"adapter.rank": {"choice": [4, 8]}}}, "adapter.rank is not a config key"),
    ({"search_space": {"tune.num_samples": {"choice": [1, 2]}}}, "tune.num_samples is not a config key"),
    ({"search_space": {"adapter.r": {"choice": [0, 8]}}}, "adapter.r=0 is not a valid value"),
    ({"search_space": {"adapter.alpha": {"choice": ["2r", "0r"]}}}, "adapter.alpha='0r' is not a valid value"),
    ({"search_space": {"adapter.method": {"choice": ["lora", "ia3"]}}}, "adapter.method='ia3'"),
    ({"search_space": {"train.lr": {"loguniform": [0, 1e-3]}}}, "needs low > 0"),
    ({"search_space": {"train.lr": {"uniform": [1e-3, 1e-4]}}}, "low < high"),
    ({"search_space": {"train.lr": {"normal": [1e-3, 1e-4]}}}, "must be one of"),
    ({"search": "grid", "search_space": {"train.lr": {"loguniform": [1e-4, 1e-3]}}}, "tune.search=grid"),
    ({"search": "tpe", "search_space": {"adapter.r": {"grid": [4, 8]}}}, "tune.search=tpe"),
]


@pytest.mark.parametrize(("tune", "named"), INVALID)
def test_a_bad_search_space_fails_at_load_naming_the_key(tune, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("[", r"\[")):
        config(**tune)


def test_every_key_kind_a_user_searches_is_accepted_and_sampled_inside_its_range():
    cfg = config(num_samples=20, search_space={
        "adapter.alpha": {"choice": ["2r", 16]}, "train.lr": {"loguniform": [1e-4, 1e-3]},
        "adapter.dropout": {"uniform": [0.0, 0.1]}, "train.micro_batch_size": {"randint": [4, 17]},
        "adapter.method": {"choice": ["lora", "dora"]}, "adapter.target_modules": {"choice": ["qv", "all-linear"]},
        "train.optimizer": {"choice": ["adamw", "sgd"]}, "adapter.r": {"grid": [4, 8]}})
    points = search_points(cfg)
    assert len(points) == 40  # 20 samples, each crossed with the 2-point grid
    assert [p["adapter.r"] for p in points[:4]] == [4, 8, 4, 8]
    assert {p["adapter.alpha"] for p in points} == {"2r", 16}
    assert all(1e-4 <= p["train.lr"] <= 1e-3 and 0 <= p["adapter.dropout"] <= 0.1 for p in points)
    assert {p["train.micro_batch_size"] for p in points} <= set(range(4, 17))
    assert len({p["train.lr"] for p in points}) == 20
    assert search_points(cfg) == points  # seeded: a restored or repeated search tries the same points
    assert search_points(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"seed": 1})})) != points


def test_a_grid_search_runs_every_combination_of_its_choices():
    cfg = config(search="grid", num_samples=1,
                 search_space={"adapter.r": {"choice": [4, 8]}, "train.lr": {"grid": [1e-4, 1e-3]}})
    assert search_points(cfg) == [{"adapter.r": r, "train.lr": lr} for r in (4, 8) for lr in (1e-4, 1e-3)]


def test_the_searcher_hands_out_each_point_once_and_its_saved_state_resumes_where_it_was(tmp_path):
    points = [{"train.lr": lr} for lr in (1e-4, 2e-4, 3e-4)]
    searcher = PointsSearch(points, "eval_loss", "min", max_concurrent=1)
    assert searcher.suggest("t0") == points[0]
    assert searcher.suggest("t1") is None  # one trial at a time
    searcher.save(str(tmp_path / "state.json"))
    restored = PointsSearch([], "eval_loss", "min", max_concurrent=1)
    restored.restore(str(tmp_path / "state.json"))
    assert restored.suggest("t1") is None  # t0 is still live after the restore
    restored.on_trial_complete("t0")
    assert [restored.suggest("t1"), restored.suggest("t2")] == [points[1], None]
    restored.on_trial_complete("t1")
    assert restored.suggest("t2") == points[2]
    restored.on_trial_complete("t2")
    assert restored.suggest("t3") == PointsSearch.FINISHED


def test_tpe_samples_the_space_as_ray_domains():
    cfg = config(search="tpe", search_space={"adapter.r": {"choice": [4, 8]}, "train.lr": {"loguniform": [1e-4, 1e-3]}})
    space = param_space(cfg)
    assert space["adapter.r"].categories == [4, 8]
    assert (space["train.lr"].lower, space["train.lr"].upper) == (1e-4, 1e-3)
    assert type(search_algorithm(cfg, 1)).__name__ == "OptunaSearch"


# (cluster resources, cluster section, trials at once): each trial needs its workers plus one CPU for its feed
AT_ONCE = [
    ({"CPU": 2.0}, {}, 1),
    ({"CPU": 4.0}, {}, 2),
    ({"CPU": 8.0}, {"num_workers": 2}, 2),
    ({"CPU": 1.0}, {}, 1),
    ({"CPU": 64.0, "GPU": 8.0}, {"use_gpu": True, "gpus_per_worker": 1, "num_workers": 4}, 2),
]


@pytest.mark.parametrize(("resources", "cluster", "expected"), AT_ONCE)
def test_trials_at_once_fit_the_cluster(resources, cluster, expected):
    cfg = config().model_copy(update={"cluster": ClusterConfig(**cluster)})
    assert trials_at_once(cfg, resources) == expected


def test_a_configured_concurrency_wins():
    assert trials_at_once(config(max_concurrent_trials=3), {"CPU": 2.0}) == 3


def test_a_search_space_key_that_does_not_exist_fails_through_the_cli_before_any_trial(capsys):
    assert main(["tune", "configs/demo.yaml", "tune.search_space={adapter.rank: {choice: [4, 8]}}"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "tune.search_space: adapter.rank is not a config key" in err
    assert "Traceback" not in err


def test_searching_on_an_eval_metric_with_eval_off_fails_before_any_trial(capsys):
    assert main(["tune", "configs/demo.yaml", "train.eval=false", "train.export=last"]) == EXIT_USAGE
    assert "tune.metric=eval_loss is measured by evaluation" in capsys.readouterr().err
