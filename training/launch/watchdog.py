"""A guard started beside every launched training process group: when the process that launched
it (the flow's task) dies without cleaning up (SIGKILL, an out-of-memory kill, a cancellation the
runner escalated to SIGKILL), it stops the group and unlinks the group's DeepSpeed shared-memory
buffers. The group lives in its own session, so nothing else would stop it: orphaned workers
would train on, hold their RAM and a rendezvous port, and write into the run folder a rerun
resumes from.

    python -m training.launch.watchdog PARENT_PID GROUP_ID MASTER_PORT

It polls every `POLL_S`: its parent is gone once `getppid()` no longer names it (the guard is
re-parented), which a recycled pid cannot fake. It ends by itself when the group is gone.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

# DeepSpeed's CPU accelerator reduces between local ranks through one POSIX shared-memory segment
# per rank (about 70 MB, named <prefix>_<uid>_<master addr>_<master port>_<rank>) and never
# unlinks it: left alone, every run would keep that much RAM (/dev/shm is memory) until reboot.
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer"


POLL_S = 0.1
GRACE_S = 3.0  # SIGTERM first: DeepSpeed's launcher forwards it to its ranks


def shm_buffers(port: int | str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """This user's DeepSpeed shared-memory buffers of the run whose master port is `port`."""
    return sorted(shm_dir.glob(f"{SHM_PREFIX}_{os.getuid()}_*_{port}_*")) if shm_dir.is_dir() else []


def remove_shm_buffers(port: int | str, shm_dir: Path = SHM_DIR) -> int:
    """Unlink what a finished (or killed) run on `port` left in shared memory; returns how many."""
    removed = 0
    for path in shm_buffers(port, shm_dir):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's group of that id
        return False
    return True


def group_running(pgid: int) -> bool:
    """A member that is not a zombie. The group's processes lost their parent with the flow: they
    wait for the container's init to reap them, which may take a second; dead is dead already."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(pgid: int, grace_s: float = GRACE_S) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_running(pgid):
                return
            time.sleep(0.02)


def guard(parent: int, pgid: int, port: str) -> int:
    while group_alive(pgid):
        if os.getppid() != parent:
            stop_group(pgid)
            break
        time.sleep(POLL_S)
    remove_shm_buffers(port)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is the launcher's to handle
    sys.exit(guard(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
