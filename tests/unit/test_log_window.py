"""The log window's clock: every phase it times lies inside the wall time it reports, even when closing it
waits for the other ranks (the all-reduce of tokens and times), so the phases of a step never add up to more
than the step."""

import time

import torch.distributed as dist

from pipelines.train.worker import LogWindow

SLOW_ALL_REDUCE_S = 0.05


def step(window: LogWindow, seconds: float) -> None:
    with window.phases.timed("forward"):
        time.sleep(seconds)
    window.add(loss=1.0, tokens=100)


def test_a_slow_close_and_the_logging_after_it_are_counted_once_in_the_next_window(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: time.sleep(SLOW_ALL_REDUCE_S))
    window = LogWindow()
    step(window, 0.01)
    first = window.close()
    time.sleep(0.02)  # writing the progress line and the metrics
    window.phases.add("logging", time.perf_counter() - window.started)
    step(window, 0.01)
    second = window.close()

    assert first["time/step_ms"] < 1000 * (0.01 + SLOW_ALL_REDUCE_S), "the first close's wait is the next window's"
    phases_ms = second["time/forward_ms"] + second["time/logging_ms"]
    assert second["time/logging_ms"] >= 1000 * (SLOW_ALL_REDUCE_S * 2 + 0.02) * 0.99, "both all-reduces and the log"
    assert phases_ms <= second["time/step_ms"] * 1.001, f"{phases_ms:.1f} ms of phases in {second['time/step_ms']:.1f}"
