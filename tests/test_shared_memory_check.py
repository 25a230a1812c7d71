"""The suite's shared-memory check (conftest `no_shared_memory_left_behind`) blames a test only
for buffers of the DeepSpeed worlds its own process started, not for those of other test
processes of the same user running at the same time, nor for leftovers of an earlier session."""
from __future__ import annotations

import os

from helpers import OwnRendezvousPorts
from training.launch.launcher import SHM_PREFIX, free_port  # bound at collection, before the session


def test_only_buffers_of_this_processs_ports_count(tmp_path):
    def buffer(port: int, rank: int = 0, uid: int = os.getuid()) -> str:
        name = f"{SHM_PREFIX}_{uid}_127.0.0.1_{port}_{rank}"
        (tmp_path / name).write_bytes(b"x")
        return name

    stale = buffer(29600)  # an earlier session's leftover on a port this session happens to reuse
    own = OwnRendezvousPorts(tmp_path)
    own.record(29600)
    own.record("29601")
    assert own.leftovers() == []
    buffer(29700)  # another test process's run, live or leaked: not ours
    buffer(29601, uid=os.getuid() + 1)  # another user's
    assert own.leftovers() == []
    mine = [buffer(29601, 0), buffer(29601, 1)]
    assert own.leftovers() == sorted(mine)
    assert own.leftovers() == [], "a leftover is reported by the first test that sees it, once"
    assert stale in {p.name for p in tmp_path.iterdir()}


def test_the_session_records_the_ports_of_in_process_worlds(own_rendezvous_ports):
    from training.launch import launcher

    seen = len(own_rendezvous_ports.ports)
    port = launcher.free_port()
    assert own_rendezvous_ports.ports[seen:] == [port]
    assert free_port() in own_rendezvous_ports.ports  # a name imported before the session started
