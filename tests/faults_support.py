"""Helpers of the fault tests: find a launched training's process group by its spec file, tell
when it is gone (zombies count as gone: they wait for a slow reaper), stream Prefect's task logs."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from training.launch.launcher import shm_buffers


def group_of(spec: Path) -> tuple[int, int] | None:
    """(process group id, master port) of the training launched with `spec`, or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
            if str(spec) in args and any(a.startswith("--master_port=") for a in args):
                port = next(a for a in args if a.startswith("--master_port=")).split("=", 1)[1]
                return os.getpgid(int(entry.name)), int(port)
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
    return None


def running(pgid: int) -> list[int]:
    """Members of a process group that are not zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_gone(pgid: int, port: int, since: float, limit_s: float = 60.0) -> float:
    """Seconds from `since` until no member of the group runs and no buffer of its world is left."""
    while (running(pgid) or shm_buffers(port)) and time.monotonic() - since < limit_s:
        time.sleep(0.02)
    return time.monotonic() - since


def wait_for(check, what: str, limit_s: float = 300.0, every_s: float = 0.05):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {limit_s:.0f} s")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
