import os
import threading
import time

from pipelines.train.build_locks import clear_stale_build_locks


def make_lock(root, op, age_s):
    lock = root / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def test_a_lock_left_by_a_killed_build_is_removed_and_the_built_op_kept(tmp_path):
    stale = make_lock(tmp_path, "deepspeed_shm_comm", age_s=3 * 3600)
    built = stale.parent / "deepspeed_shm_comm.so"
    built.write_bytes(b"op")
    assert clear_stale_build_locks([tmp_path], stale_after_s=600, poll_s=0.01) == [stale]
    assert not stale.exists() and built.read_bytes() == b"op"


def test_a_live_build_is_waited_for_not_cut_off(tmp_path):
    live = make_lock(tmp_path, "fused_adam", age_s=0)
    threading.Timer(0.5, live.unlink).start()  # the build ends and releases its lock
    started = time.monotonic()
    assert clear_stale_build_locks([tmp_path], stale_after_s=600, poll_s=0.05) == []
    assert time.monotonic() - started >= 0.4


def test_a_lock_that_outlives_any_build_is_removed_after_waiting(tmp_path):
    lock = make_lock(tmp_path, "deepspeed_shm_comm", age_s=0)
    started = time.monotonic()
    assert clear_stale_build_locks([tmp_path], stale_after_s=0.3, poll_s=0.05) == [lock]
    assert 0.3 <= time.monotonic() - started < 5


def test_no_extensions_folder_is_nothing_to_wait_for(tmp_path):
    assert clear_stale_build_locks([tmp_path / "absent"]) == []
