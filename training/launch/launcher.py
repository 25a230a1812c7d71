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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from training.config import TrainingConfig
# the guard runs these too, and starts fast by importing nothing heavy: they live with it
from training.launch.watchdog import SHM_DIR, SHM_PREFIX, remove_shm_buffers, shm_buffers  # noqa: F401

class TrainingFailed(RuntimeError):
    """The launched training exited non-zero or ran past its time limit."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(train: TrainingConfig, spec_path: str, master_port: int,
                   hostfile: str | None = None) -> list[str]:
    """The launcher command for this node. Several nodes: every node runs this with its own
    `train.node_rank` (deepspeed --no_ssh, or torchrun), or node 0 alone starts all of them over
    ssh from a hostfile (`multi_node_launch: ssh`, deepspeed only)."""
    bin_dir = Path(sys.executable).parent
    worker = ["--spec", spec_path]
    addr, nodes, procs = train.master_addr, train.nodes, train.processes
    if train.launcher == "torchrun":
        return [str(bin_dir / "torchrun"), f"--nnodes={nodes}", f"--nproc_per_node={procs}",
                f"--node_rank={train.node_rank}", f"--master_addr={addr}", f"--master_port={master_port}",
                "-m", "training.trainer.worker", *worker]
    cmd = [str(bin_dir / "deepspeed"), f"--master_port={master_port}", f"--master_addr={addr}"]
    if nodes == 1:
        cmd += ["--num_nodes=1", f"--num_gpus={procs}"]
    elif train.multi_node_launch == "ssh":
        cmd += [f"--hostfile={hostfile}", f"--num_nodes={nodes}", f"--num_gpus={procs}"]
    else:
        # the runner reads the world's shape from a hostfile even without ssh; its names are labels
        cmd += [f"--hostfile={hostfile}", "--no_ssh", f"--node_rank={train.node_rank}",
                f"--num_nodes={nodes}", f"--num_gpus={procs}"]
    return cmd + ["--module", "training.trainer.worker", *worker]


def write_hostfile(path: str | Path, nodes: int, processes: int) -> str:
    """A hostfile naming `nodes` nodes of `processes` slots (used by --no_ssh only for its shape)."""
    Path(path).write_text("".join(f"node-{i} slots={processes}\n" for i in range(nodes)))
    return str(path)


def release_own_shm_buffer(rank: int, shm_dir: Path = SHM_DIR) -> None:
    """Called by each worker once every local rank has mapped every other rank's buffer (after a
    barrier that follows the process group's start): the name is no longer needed, and unlinking
    it now frees the memory when the processes end, however they end."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        (shm_dir / f"{SHM_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}").unlink(missing_ok=True)


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


def held_open(path: Path) -> bool:
    """Whether any process of this machine has `path` open (Linux: its /proc/<pid>/fd links)."""
    target = str(path.resolve())
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = list(fd_dir.iterdir())
        except (PermissionError, FileNotFoundError):
            continue
        for link in links:
            try:
                if os.readlink(link) == target:
                    return True
            except OSError:
                continue
    return False


STALE_LOCK_S = 600.0  # a build takes 1-4 minutes on 2 cores; far longer is no build at all


def remove_stale_build_locks(ops_dir: Path, private: bool | None = None) -> list[Path]:
    """torch builds an op under `<op>/lock`, a file created exclusively and held open until the
    build ends; a process killed while loading an op (a rank killed at start-up) leaves it behind,
    and every later load of that op waits for it forever. A lock no process of this machine holds
    open is stale when the folder is this environment's own (under `sys.prefix`, as `make` and the
    launcher set it), or else, since a folder shared between machines may be locked from another,
    once it is older than `STALE_LOCK_S`. Removed, and the removed paths returned."""
    if not ops_dir.is_dir() or not Path("/proc/self/fd").is_dir():
        return []
    if private is None:
        private = ops_dir.resolve().is_relative_to(Path(sys.prefix).resolve())
    now = time.time()
    stale = [lock for lock in ops_dir.glob("*/lock")
             if (private or now - lock.stat().st_mtime > STALE_LOCK_S) and not held_open(lock)]
    for lock in stale:
        lock.unlink(missing_ok=True)
    return stale


def start_watchdog(group: int, shm_port: int | str | None, env: dict[str, str]) -> subprocess.Popen:
    """The guard that stops `group` and frees its shared memory if this process dies first
    (training/launch/watchdog.py). Its own session too: a signal to this process's group (a
    runner stopping the flow) must not take the guard down before it has done its job."""
    root = str(Path(__file__).resolve().parents[2])  # this very package, wherever the caller runs
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen([sys.executable, "-m", "training.launch.watchdog", str(os.getpid()), str(group),
                             str(shm_port or "none")], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def run_launcher(cmd: list[str], env: dict[str, str], timeout_s: float, log: Callable[[str], None],
                 cwd: str | None = None, shm_port: int | str | None = None) -> None:
    """Run `cmd` in a new session (its own process group); raise `TrainingFailed` unless it exits 0.
    A watchdog process stops the group (and frees the shared memory of the world on `shm_port`)
    if this process is killed before its own cleanup can run."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    guard = start_watchdog(proc.pid, shm_port, env)

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
            try:  # returns as the group's leader exits; Popen.wait polls in Python, so a cancellation
                proc.wait(timeout=0.5)  # raised into this thread still lands within its 50 ms naps
            except subprocess.TimeoutExpired:
                pass
    finally:
        # on timeout, an exception or a cancellation of the calling task: no orphan workers
        kill_group(proc)
        reader.join(timeout=5)
        stop_watchdog(guard)
    if proc.returncode != 0:
        raise TrainingFailed(f"training exited with code {proc.returncode}; see the log above")


def stop_watchdog(guard: subprocess.Popen) -> None:
    """The group is gone: the guard ends by itself within a poll; do not wait longer than that."""
    try:
        guard.wait(timeout=2)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


@contextmanager
def single_process_world() -> Iterator[None]:
    """This process as a DeepSpeed world of one, for work done in-process (benchmarks, tests):
    the rendezvous variables a launcher would set, the process group, and afterwards the variables
    as they were, so workers launched later do not inherit this world."""
    import deepspeed
    import torch.distributed as dist

    world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    saved = {key: os.environ.get(key) for key in world}
    os.environ.update(world)
    try:
        deepspeed.init_distributed()
        release_own_shm_buffer(0)
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        # DeepSpeed keeps a clone of the world group for good; a later world in this process would
        # be handed the destroyed one ("Group ... is not registered")
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
