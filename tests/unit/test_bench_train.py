"""The train benchmark's report: the median window, honest scaling, per-worker MFU at each worker's thread count."""

from __future__ import annotations

import pytest

from pipelines.bench.train import BenchResult, PathResult, Window, after_warmup, median_window
from pipelines.config import validate_config


def test_the_median_window_is_one_measured_window_after_warmup():
    windows = [Window(tokens_per_s=t, step_ms=1000.0 / t, phase_ms={"forward": t}) for t in (50, 300, 100, 200, 400)]
    kept = after_warmup(windows)
    assert [w.tokens_per_s for w in kept] == [300, 100, 200, 400], "the first window is warm-up"
    assert median_window(kept) is kept[2], "the lower middle of an even count: its phases add up to its wall"


def test_the_report_gives_ratio_scaling_per_worker_mfu_and_phases_that_add_up(demo_config_dict):
    phases = {"data": 1.0, "forward": 40.0, "backward": 50.0, "optimizer": 5.0, "logging": 1.0}
    bare = PathResult("bare", tokens_per_s=1000.0, step_ms=100.0, phase_ms=phases)
    one = PathResult("one", tokens_per_s=960.0, step_ms=104.0, phase_ms={**phases, "optimizer": 8.0})
    two = PathResult("two", tokens_per_s=1800.0, step_ms=110.0, phase_ms=phases, workers=2)
    result = BenchResult(bare=bare, one=one, two=two, peaks={1: 1e10}, flops_per_token=1e6, allreduce_ms=0.5,
                         trainable_params=1000, cfg=validate_config(demo_config_dict),
                         load={"start": (1.0, 1.0, 1.0)})
    assert result.ratio == pytest.approx(0.96) and result.scaling == pytest.approx(1.875)
    assert result.mfu(two) == pytest.approx(900.0 * 1e6 / 1e10), "MFU per worker: its share of the tokens"
    assert one.other_ms == pytest.approx(104.0 - 100.0) and result.engine_overhead_ms(one) == pytest.approx(3.0)
    report = str(result)
    assert "raylora / bare: 0.960" in report and "2-worker scaling: 1.88x" in report
    assert "load average (1, 5, 15 min): start 1.0 1.0 1.0" in report
