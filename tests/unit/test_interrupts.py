"""Ctrl-C: the first raises KeyboardInterrupt as Python does, a second while it is being handled exits at once with
130, and work run through ``in_a_thread`` gives its result, its error, or the main thread's KeyboardInterrupt."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from pipelines.interrupts import EXIT_INTERRUPTED, in_a_thread, second_interrupt_exits

# handles the first Ctrl-C slowly, as a command that shuts a cluster down does
SLOW_TO_STOP = """
import sys, time
from pipelines.interrupts import second_interrupt_exits
with second_interrupt_exits("demo"):
    try:
        print("working", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        time.sleep(60)
"""


def test_a_second_ctrl_c_while_the_first_is_handled_exits_at_once_with_130():
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TO_STOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "working\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "stopping\n"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == EXIT_INTERRUPTED
    assert time.monotonic() - started < 5
    assert proc.stderr.read().strip() == "raylora demo: interrupted again: stopping now"


def test_outside_the_context_the_previous_handler_is_back():
    before = signal.getsignal(signal.SIGINT)
    with second_interrupt_exits("demo"):
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_work_in_a_thread_gives_its_value_or_raises_its_error():
    assert in_a_thread(lambda: 41 + 1, "sum") == 42

    def fails() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        in_a_thread(fails, "fails")
