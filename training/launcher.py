"""Launch the training worker as its own process group, stream its output, enforce a timeout,
and kill every child on failure, timeout or cancellation."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from training.config import TrainingConfig


class TrainingFailed(RuntimeError):
    """The launched training exited non-zero or ran past its time limit."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(train: TrainingConfig, spec_path: str, master_port: int,
                   node_rank: int = 0, master_addr: str = "127.0.0.1",
                   hostfile: str | None = None) -> list[str]:
    bin_dir = Path(sys.executable).parent
    worker = ["--spec", spec_path]
    if train.launcher == "torchrun":
        return [str(bin_dir / "torchrun"), f"--nnodes={train.nodes}", f"--nproc_per_node={train.processes}",
                f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}",
                "-m", "training.worker", *worker]
    cmd = [str(bin_dir / "deepspeed"), f"--master_port={master_port}", f"--master_addr={master_addr}"]
    if hostfile:
        cmd += [f"--hostfile={hostfile}"]
    elif train.nodes > 1:
        cmd += ["--no_ssh", f"--node_rank={node_rank}", f"--num_nodes={train.nodes}",
                f"--num_gpus={train.processes}"]
    else:
        cmd += ["--num_nodes=1", f"--num_gpus={train.processes}"]
    return cmd + ["--module", "training.worker", *worker]


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_launcher(cmd: list[str], env: dict[str, str], timeout_s: float, log: Callable[[str], None],
                 cwd: str | None = None) -> None:
    """Run `cmd` in a new session (its own process group); raise `TrainingFailed` unless it exits 0."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TrainingFailed(f"training ran past its {timeout_s:.0f} s limit and was stopped")
            time.sleep(0.5)
    finally:
        # on timeout, an exception or a cancellation of the calling task: no orphan workers
        kill_group(proc)
        reader.join(timeout=5)
    if proc.returncode != 0:
        raise TrainingFailed(f"training exited with code {proc.returncode}; see the log above")
