"""The launcher owns its process group: a timeout or failure leaves no child behind."""
from __future__ import annotations

import os
import sys
import time

import pytest

from training.launch.launcher import TrainingFailed, run_launcher

SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("child", child.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead for our purposes
        return handle.read().split()[2] != "Z"


def test_timeout_kills_the_whole_group():
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(TrainingFailed, match="ran past its 3 s limit"):
        run_launcher([sys.executable, "-c", SPAWNER], dict(os.environ), 3, lines.append)
    assert time.monotonic() - started < 30
    child = int(next(l for l in lines if l.startswith("child")).split()[1])
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(child)


def test_nonzero_exit_is_a_failure_with_streamed_output():
    lines: list[str] = []
    with pytest.raises(TrainingFailed, match="exited with code 3"):
        run_launcher([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ), 30,
                     lines.append)
    assert lines == ["boom"]


def test_shared_memory_buffers_of_one_run_are_removed_and_others_kept(tmp_path, monkeypatch):
    from training.launch.launcher import SHM_PREFIX, release_own_shm_buffer, remove_shm_buffers

    uid = os.getuid()
    mine = [tmp_path / f"{SHM_PREFIX}_{uid}_127.0.0.1_29511_{r}" for r in (0, 1)]
    other_run = tmp_path / f"{SHM_PREFIX}_{uid}_127.0.0.1_29512_0"
    other_user = tmp_path / f"{SHM_PREFIX}_{uid + 1}_127.0.0.1_29511_0"
    for path in (*mine, other_run, other_user):
        path.write_bytes(b"x")
    assert remove_shm_buffers(29511, tmp_path) == 2
    assert not any(p.exists() for p in mine) and other_run.exists() and other_user.exists()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29512")
    release_own_shm_buffer(0, tmp_path)
    release_own_shm_buffer(0, tmp_path)  # already gone: no error
    assert not other_run.exists() and other_user.exists()


def test_a_build_lock_nobody_holds_is_removed_and_a_held_one_kept(tmp_path):
    """A rank killed while torch built or loaded a DeepSpeed op leaves `<op>/lock`, and every later
    run waits on it forever (seen: six minutes of every run on the machine, until removed by hand)."""
    from training.launch.launcher import remove_stale_build_locks

    stale, held = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "cpu_adam" / "lock"
    for lock in (stale, held):
        lock.parent.mkdir()
    stale.touch()
    fd = os.open(held, os.O_CREAT | os.O_EXCL)  # as torch's FileBaton holds it while it builds
    try:
        assert remove_stale_build_locks(tmp_path, private=True) == [stale]
        assert not stale.exists() and held.exists()
    finally:
        os.close(fd)
    # a folder other machines may share: only a lock far older than any build
    assert remove_stale_build_locks(tmp_path) == []  # tmp_path is not under the environment
    os.utime(held, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_build_locks(tmp_path) == [held]
    assert remove_stale_build_locks(tmp_path / "missing") == []
