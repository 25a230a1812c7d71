"""The launcher's guard: a flow process SIGKILLed while training runs (nothing of its own cleanup
runs) still leaves no process of the launched group and no shared-memory buffer behind, within
`GONE_WITHIN_S` of the kill. The figure is the measured time from the kill to the group's end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from training.launch.launcher import SHM_PREFIX, free_port

GONE_WITHIN_S = 5.0

# a stand-in for the flow: launches a group (a launcher and its child, like deepspeed and a rank)
# that has put a DeepSpeed-named buffer in shared memory, then waits to be killed
FLOW = """
import os, sys
from training.launch.launcher import run_launcher
shm = sys.argv[1]
spawner = f'''
import subprocess, sys, time
open({shm!r}, "wb").write(b"x")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("group", __import__("os").getpgid(0), "child", child.pid, flush=True)
time.sleep(300)
'''
run_launcher([sys.executable, "-c", spawner], dict(os.environ), 300, lambda l: print(l, flush=True),
             shm_port=sys.argv[2])
"""


def group_alive(pgid: int) -> bool:
    """A member that is not a zombie: a killed child waits for a reaper that may be slow."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, NotADirectoryError, PermissionError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_sigkilled_flow_process_leaves_no_group_and_no_shared_memory():
    port = free_port()
    shm = Path("/dev/shm") / f"{SHM_PREFIX}_{os.getuid()}_127.0.0.1_{port}_0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    flow = subprocess.Popen([sys.executable, "-c", FLOW, str(shm), str(port)], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert flow.stdout is not None
        line = flow.stdout.readline().split()
        pgid, child = int(line[1]), int(line[3])
        assert shm.exists() and group_alive(pgid)
        time.sleep(0.5)  # the guard is up (it starts right after the group)
        flow.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        flow.wait()
        while (group_alive(pgid) or shm.exists()) and time.monotonic() - killed < 30:
            time.sleep(0.02)
        took = time.monotonic() - killed
    finally:
        if flow.poll() is None:
            flow.kill()
        shm.unlink(missing_ok=True)
    print(f"group and shared memory gone {took:.2f} s after the SIGKILL")
    assert not group_alive(pgid) and not shm.exists()
    assert took < GONE_WITHIN_S, f"the group outlived its flow process by {took:.2f} s"
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", f"{child} still runs"
