"""The promotion gate as a table, the gate set's key, and the register section's rules."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipelines.config import RegisterConfig, load_config, validate_config
from pipelines.errors import ConfigError
from pipelines.register.gate import decide, gate_set_key

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"

# (register section, challenger, champion, promote?, words in the reason)
GATE_CASES = [
    pytest.param({}, {"eval_loss": 2.0}, None, True, "first champion", id="first-version-no-gates"),
    pytest.param({"gates": {"eval_exact_match": {"min": 0.2}}}, {"eval_loss": 1.0, "eval_exact_match": 0.1}, None,
                 False, "eval_exact_match 0.1 < min 0.2", id="first-version-misses-a-gate"),
    pytest.param({"gates": {"eval_loss": {"max": 2.0}}}, {"eval_loss": 2.5}, None, False, "eval_loss 2.5 > max 2",
                 id="max-bound-missed"),
    pytest.param({"gates": {"eval_exact_match": {"min": 0.2}}}, {"eval_loss": 1.0}, None, False,
                 "eval_exact_match was not measured", id="gate-metric-not-measured"),
    pytest.param({"min_improvement": 0.05}, {"eval_loss": 1.0}, {"eval_loss": 1.1}, True, "better by 0.1",
                 id="min-mode-beats-by-the-margin"),
    pytest.param({"min_improvement": 0.05}, {"eval_loss": 1.08}, {"eval_loss": 1.1}, False, "needs more than 0",
                 id="min-mode-short-of-the-margin"),
    pytest.param({}, {"eval_loss": 1.1}, {"eval_loss": 1.1}, False, "improvement 0", id="a-tie-keeps-the-champion"),
    pytest.param({"gate_metric": "eval_exact_match", "gate_mode": "max"}, {"eval_exact_match": 0.5},
                 {"eval_exact_match": 0.4}, True, "better by 0.1", id="max-mode-higher-wins"),
    pytest.param({"gates": {"eval_loss": {"max": 2.0}}}, {"eval_loss": 1.9}, {"eval_loss": 1.5}, False,
                 "improvement -0.4", id="gates-hold-but-worse-than-champion"),
]


@pytest.mark.parametrize(("section", "challenger", "champion", "promote", "reason"), GATE_CASES)
def test_the_gate(section, challenger, champion, promote, reason):
    decision = decide(challenger, champion, RegisterConfig(**section), champion_version="4" if champion else None)
    assert decision.promote is promote
    assert reason in decision.reason
    if champion is not None:
        assert "champion version 4" in decision.reason or "gates not met" in decision.reason


def demo_raw(tmp_path) -> dict:
    raw = yaml.safe_load(DEMO.read_text())
    sets = []
    for name in ("eval", "support"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text('{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}\n')
        sets.append(str(path))
    raw["data"]["eval_sets"] = sets
    return raw


def test_the_gate_set_is_the_named_one_or_the_first(tmp_path):
    raw = demo_raw(tmp_path)
    assert validate_config(raw).gate_eval_set_path == raw["data"]["eval_sets"][0]
    by_stem = copy.deepcopy(raw)
    by_stem["register"]["gate_eval_set"] = "support"
    assert validate_config(by_stem).gate_eval_set_path == raw["data"]["eval_sets"][1]


@pytest.mark.parametrize(("override", "message"), [
    ("register.gate_eval_set=heldout", "register.gate_eval_set=heldout is not one of data.eval_sets"),
    ("register.gate_metric=accuracy", "use one of eval_loss, eval_perplexity, eval_exact_match"),
    ("register.gates={bleu: {min: 0.1}}", "register.gates ['bleu'] are not measured"),
    ("register.gates={eval_loss: {}}", "needs min or max"),
    ("tune.metric=eval/eval/loss", "selects trials on the gate set"),
])
def test_bad_register_sections_fail_naming_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(DEMO, [override])


def test_the_gate_set_key_follows_the_set_and_the_eval_settings(tmp_path):
    raw = demo_raw(tmp_path)
    cfg = validate_config(raw)
    path = raw["data"]["eval_sets"][0]
    key = gate_set_key(cfg, path)
    assert gate_set_key(validate_config(raw), path) == key
    assert gate_set_key(cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_generate_limit": 3})}),
                        path) != key
    with open(path, "a") as more:
        more.write('{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n')
    assert gate_set_key(cfg, path) != key
