"""Ctrl-C: the first stops the command within seconds with one line and exit 130; a second stops it at once.

Ray Train's ``fit()`` and Ray Tune's ``Tuner.fit()`` install SIGINT handlers of their own when called from the main
thread: Train's aborts gracefully, keeps training for seconds and ends in ``SystemExit(0)``; Tune's finishes the
step it is in and returns as if the search had ended. So raylora calls them through ``in_a_thread``: the main
thread keeps Python's KeyboardInterrupt, and the stage marks its MLflow run KILLED and says how to resume. The
work itself stops when the process exits: the Train controller and the trials are actors this driver owns.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
JOIN_POLL_S = 0.2


@contextmanager
def second_interrupt_exits(command: str) -> Iterator[None]:
    """The first SIGINT raises KeyboardInterrupt as usual; a second one, while the first is being handled
    (a run marked killed, the local cluster shut down at exit), exits at once. Unless one was pressed, the
    previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if pressed.is_set():
            print(f"\nraylora {command}: interrupted again: stopping now", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        pressed.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if not pressed.is_set():  # once pressed, the process is on its way out (Ray's shutdown at exit): keep it
            signal.signal(signal.SIGINT, previous)


def in_a_thread(work: Callable[[], T], name: str) -> T:
    """``work()`` run in a daemon thread while this thread waits for it, so that a Ctrl-C raises
    KeyboardInterrupt here at once and the libraries' own SIGINT handlers are never installed."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the waiting thread, which raises it as its own
            outcome["error"] = err

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(JOIN_POLL_S)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
