"""Studies without Ray: every study YAML validates (and its grid is valid for a run config), a bad study file is
one line naming the key and exit 2 before any Ray work, the verdict statistic, and claims judged on rows."""

from __future__ import annotations

import math

import pytest
import yaml

from pipelines.cli import EXIT_OK, EXIT_USAGE, main
from pipelines.config import validate_config
from pipelines.errors import ConfigError
from pipelines.study import load_study, study_names
from pipelines.study.report import read_table, table_markdown
from pipelines.study.runner import judge_claim, replaced_settings, search_configs
from pipelines.study.schema import MIN_SEEDS, Claim, study_path
from pipelines.study.verdict import CONTRADICTED, INCONCLUSIVE, REPRODUCED, judge, overall, seed_difference

STUDIES = {"qlora-vs-lora", "optimizer-by-rank", "schedule", "epochs", "targets", "alpha-rule", "rank",
           "dora-vs-lora", "data-quality", "forgetting"}
TINY_HIDDEN_SIZE = 128


def test_the_studies_are_the_ten_findings_issue_17_names():
    assert set(study_names()) == STUDIES


def test_forgetting_measures_full_against_lora_on_the_pretraining_text(demo_config_dict):
    study = load_study("forgetting")
    (search,) = [search for _, search in search_configs(study, validate_config(demo_config_dict),
                                                        study.scaled_grid(TINY_HIDDEN_SIZE), study.seeds,
                                                        reduced=False).values()]
    assert search.data.eval_sets == [".raylora/data/eval.jsonl", ".raylora/data/pretraining.jsonl"]
    assert search.tune.search_space["adapter.method"] == {"grid": ["lora", "full"]}
    assert [(c.metric, c.expect) for c in study.claims] == [("eval_loss", "lower"), ("eval/pretraining/loss", "higher")]
    assert all((c.a, c.b) == ({"adapter.method": "full"}, {"adapter.method": "lora"}) for c in study.claims)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_yaml_validates_and_its_grid_is_valid_for_a_run_config(name, demo_config_dict):
    study = load_study(name)
    assert study_path(name).read_text().startswith(f"# raylora study {name} configs/demo.yaml\n")
    assert len(study.seeds) >= MIN_SEEDS
    cfg = validate_config(demo_config_dict)
    for reduced in (False, True):
        grid = study.scaled_grid(TINY_HIDDEN_SIZE, reduced)
        assert all(r <= TINY_HIDDEN_SIZE // 2 for r in grid.get("adapter.r", []))
        configs = search_configs(study, cfg, grid, study.run_seeds(reduced), reduced)
        assert len(configs) == max(1, len(study.data))
        for _, search in configs.values():
            space = search.tune.search_space
            assert space["train.seed"] == {"grid": study.run_seeds(reduced)}
            assert {k: v["grid"] for k, v in space.items() if k != "train.seed"} == grid
            assert (search.tune.search, search.tune.scheduler) == ("grid", "fifo")


def test_ranks_are_capped_at_half_the_hidden_size_then_deduplicated():
    study = load_study("rank")
    assert study.scaled_grid(TINY_HIDDEN_SIZE)["adapter.r"] == [4, 16, 64]
    assert study.scaled_grid(4096)["adapter.r"] == [4, 16, 64, 256]
    assert load_study("optimizer-by-rank").scaled_grid(TINY_HIDDEN_SIZE)["adapter.r"] == [8, 64]


def test_rank_compares_the_rank_gain_of_the_diverse_mix_with_the_narrow_tasks(demo_config_dict):
    from pipelines.config import validate_config
    from pipelines.study.runner import judge_claim

    study = load_study("rank")
    configs = search_configs(study, validate_config(demo_config_dict), {"adapter.r": [4, 64]}, [0, 1, 2], False)
    assert configs["diverse"][0].data.sources == validate_config(demo_config_dict).data.sources
    assert [s.path for s in configs["narrow"][0].data.sources] == [".raylora/data/narrow.jsonl"]
    loss = {("diverse", 4): 3.0, ("diverse", 64): 2.0, ("narrow", 4): 1.5, ("narrow", 64): 1.4}
    rows = [{"data": d, "adapter.r": r, "seed": seed, "metrics": {"eval_loss": v + 0.01 * seed}, "error": None}
            for (d, r), v in loss.items() for seed in (0, 1, 2)]
    judged = judge_claim(study.claims[1], rows, {"data": ["diverse", "narrow"], "adapter.r": [4, 64]}, [0, 1, 2])
    # (2.0 + 1.5) - (3.0 + 1.4): the diverse mix gains 1.0 from r, the narrow task 0.1
    assert judged["mean"] == pytest.approx(-0.9)


def write_study(tmp_path, **changes) -> str:
    raw = yaml.safe_load(study_path("targets").read_text())
    raw.update(changes)
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(("changes", "named"), [
    ({"seedz": [0, 1, 2]}, "seedz: unknown key"),
    ({"seeds": [0, 1]}, "seeds: List should have at least 3 items"),
    ({"grid": {"adapter.rank": {"grid": [4]}}}, "adapter.rank is not a config key"),
    ({"grid": {"adapter.r": {"choice": [4, 8]}}}, "grid.adapter.r must be {grid: [values]}"),
    ({"claims": [{"statement": "s", "metric": "eval_loss", "a": {"adapter.r": 4}, "b": {}, "expect": "lower"}]},
     "selects on adapter.r, which is not a grid key"),
    ({"claims": [{"statement": "s", "metric": "eval_loss", "a": {"adapter.target_modules": "mlp"}, "b": {},
                  "expect": "lower"}]}, "selects adapter.target_modules='mlp', not in the grid"),
])
def test_a_bad_study_is_one_line_naming_the_key(tmp_path, changes, named):
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, **changes))
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_bad_study_with_exit_2_before_any_ray_work(tmp_path, demo_config_dict, monkeypatch,
                                                                     capsys):
    import ray

    import pipelines.study

    def must_not_run(*args, **kwargs):
        raise AssertionError("the study ran")

    monkeypatch.setattr(pipelines.study, "run_study", must_not_run)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    was_up = ray.is_initialized()
    assert main(["study", write_study(tmp_path, seedz=[0, 1, 2]), str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("raylora study: study ") and "seedz: unknown key" in err and "\n" not in err
    assert main(["study", "no-such-study", str(config)]) == EXIT_USAGE
    assert "no study no-such-study" in capsys.readouterr().err
    assert ray.is_initialized() == was_up


@pytest.mark.parametrize(("name", "override", "named"), [
    ("rank", "adapter.r=8", "adapter.r on the command line is the grid of study rank, which would replace it"),
    ("targets", "train.seed=5", "train.seed on the command line is the seeds of study targets"),
    ("qlora-vs-lora", "tune.search=tpe", "tune.search on the command line is how a study searches"),
])
def test_a_command_line_key_the_study_varies_is_exit_2_before_any_ray_work(name, override, named, tmp_path,
                                                                          demo_config_dict, monkeypatch, capsys):
    import ray

    import pipelines.curate
    import pipelines.tune

    def must_not_run(*args, **kwargs):
        raise AssertionError("the study started")

    monkeypatch.setattr(pipelines.curate, "curate", must_not_run)
    monkeypatch.setattr(pipelines.tune, "tune", must_not_run)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    was_up = ray.is_initialized()
    assert main(["study", name, str(config), override]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert named in err and f"run a copy of {study_path(name)}" in err and "\n" not in err
    assert ray.is_initialized() == was_up


def test_a_command_line_key_the_study_sets_wins_and_is_said(demo_config_dict):
    study = load_study("forgetting")
    mine = ["my_eval.jsonl", "pretraining.jsonl"]  # a user's model: the text its base was trained on
    overrides = {"train.max_steps": 7, "data.eval_sets": mine, "train.lr": 5e-4}
    cfg = validate_config({**demo_config_dict, "train": {**demo_config_dict["train"], "max_steps": 7, "lr": 5e-4}})
    (search,) = [search for _, search in search_configs(study, cfg, study.scaled_grid(TINY_HIDDEN_SIZE), study.seeds,
                                                        False, overrides).values()]
    assert (search.train.max_steps, search.data.eval_sets, search.train.lr) == (7, mine, 5e-4)
    assert search.train.eval_every == 60  # a setting the command line leaves is the study's
    assert replaced_settings(study, overrides, reduced=False) == [
        "train.max_steps=7 from the command line replaces the study's 60",
        f"data.eval_sets={mine} from the command line replaces the study's "
        "['.raylora/data/eval.jsonl', '.raylora/data/pretraining.jsonl']"]


def test_the_cli_lists_every_study_with_its_claims(capsys):
    assert main(["study", "--list"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in STUDIES:
        assert any(line.startswith(name + " ") for line in out.splitlines())
        for claim in load_study(name).claims:
            assert f"- {claim.statement} [{claim.metric}, {claim.expect}]" in out


def test_the_statistic_is_the_mean_difference_against_twice_its_standard_error():
    diff = seed_difference([-0.30, -0.20, -0.25])
    assert diff.n == 3 and diff.mean == pytest.approx(-0.25)
    assert diff.standard_error == pytest.approx(0.05 / math.sqrt(3))  # sample sd 0.05
    assert diff.counts
    noisy = seed_difference([-0.3, 0.2, -0.1])  # mean -0.067, SE 0.145: noise
    assert not noisy.counts
    assert not seed_difference([-1.0, -1.1]).counts  # two seeds never count, however far apart
    one = seed_difference([0.5])
    assert (one.n, one.mean, one.standard_error, one.counts) == (1, 0.5, None, False)


@pytest.mark.parametrize(("diffs", "expect", "tolerance", "verdict"), [
    ([-0.30, -0.20, -0.25], "lower", 0.0, REPRODUCED),
    ([-0.30, -0.20, -0.25], "lower", 0.3, INCONCLUSIVE),  # real, but smaller than what matters
    ([-0.30, -0.20, -0.25], "higher", 0.0, CONTRADICTED),
    ([-0.3, 0.2, -0.1], "lower", 0.0, INCONCLUSIVE),  # noise is never a finding
    ([-0.3, -0.2], "lower", 0.0, INCONCLUSIVE),  # fewer than 3 seeds
    ([0.01, -0.01, 0.0], "similar", 0.05, REPRODUCED),
    ([0.30, 0.20, 0.25], "similar", 0.05, CONTRADICTED),
    ([0.1, -0.1, 0.05], "similar", 0.05, INCONCLUSIVE),  # the band straddles the tolerance
])
def test_the_verdict_of_a_claim(diffs, expect, tolerance, verdict):
    assert judge(seed_difference(diffs), expect, tolerance)[0] == verdict


def test_a_study_reproduces_only_when_every_claim_does():
    assert overall([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert overall([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert overall([REPRODUCED, CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED


def rows_of(values: dict[tuple[str, int, int], float]) -> list[dict]:
    return [{"train.optimizer": opt, "adapter.r": r, "seed": seed, "metrics": {"peak_memory_mib": v}, "error": None}
            for (opt, r, seed), v in values.items()]


def test_a_gap_that_grows_with_r_is_judged_from_per_seed_contrasts():
    claim = load_study("optimizer-by-rank").claims[1]
    axes = {"train.optimizer": ["adamw", "sgd"], "adapter.r": [8, 64]}
    memory = {}
    for seed, noise in enumerate([0.0, 1.0, -1.0]):
        memory.update({("adamw", 8, seed): 100 + noise, ("sgd", 8, seed): 99 + noise,
                       ("adamw", 64, seed): 120 + noise, ("sgd", 64, seed): 110 + 2 * noise})
    judged = judge_claim(claim, rows_of(memory), axes, [0, 1, 2])
    # per seed: (adamw64 - sgd64) - (adamw8 - sgd8) = (10 - noise) - 1
    assert judged["per_seed_difference"] == {"0": 9.0, "1": 8.0, "2": 10.0}
    assert judged["a"] == [{"train.optimizer": "adamw", "adapter.r": 64}, {"train.optimizer": "sgd", "adapter.r": 8}]
    assert judged["mean"] == pytest.approx(9.0) and judged["verdict"] == REPRODUCED
    del memory[("sgd", 8, 2)]  # a failed trial: its seed has no contrast
    judged = judge_claim(claim, rows_of(memory), axes, [0, 1, 2])
    assert judged["seeds_missing"] == [2] and judged["verdict"] == INCONCLUSIVE
    for seed in (0, 1):  # every trial of one point failed: inconclusive, not an error that loses the table
        del memory[("sgd", 8, seed)]
    judged = judge_claim(claim, rows_of(memory), axes, [0, 1, 2])
    assert judged["verdict"] == INCONCLUSIVE and judged["n"] == 0 and judged["mean"] is None
    assert judged["seeds_missing"] == [0, 1, 2] and "no seed has peak_memory_mib on both sides" in judged["why"]


def test_the_table_has_one_row_per_point_and_seed_and_reads_back():
    memory = {("adamw", 8, 0): 100.5, ("sgd", 8, 0): 99.25}
    text = table_markdown(rows_of(memory), ["train.optimizer", "adapter.r"], ["eval_loss", "peak_memory_mib"],
                          with_data=False)
    back = read_table(text)
    assert [(r["train.optimizer"], r["seed"], r["peak_memory_mib"], r["eval_loss"]) for r in back] == [
        ("adamw", "0", "100.5", "-"), ("sgd", "0", "99.25", "-")]


def test_a_claim_side_may_be_one_point_or_several():
    claim = Claim(statement="s", metric="m", a={"k": 1}, b=[{"k": 2}, {"k": 3}], expect="lower")
    assert claim.sides == ([{"k": 1}], [{"k": 2}, {"k": 3}])


def test_a_reduced_grid_keeps_every_value_a_claim_selects(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, reduced={"grid": {"adapter.target_modules": {"grid": ["qv"]}}}))
    assert "reduced.grid.adapter.target_modules drops 'all-linear', which a claim selects" in str(err.value)


def test_a_trial_that_did_not_train_to_the_end_is_a_row_with_its_reason_and_no_metrics():
    from pipelines.study.runner import trial_rows

    trials = [{"params": {"adapter.r": 16, "train.seed": 1}, "train_result": None, "error": None, "steps": 20},
              {"params": {"adapter.r": 4, "train.seed": 1}, "train_result": None, "error": "OOM", "steps": 0}]
    rows = trial_rows("", trials, {"adapter.r": [4, 16]})
    assert [(r["adapter.r"], r["seed"], r["metrics"], r["error"]) for r in rows] == [
        (4, 1, {}, "OOM"), (16, 1, {}, "stopped at step 20")]
