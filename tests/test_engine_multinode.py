"""The multi-node path on loopback: two launchers, each acting as one node of one process,
rendezvous at 127.0.0.1, share a checkpoint folder (standing in for a shared disk or s3://),
and node 0 exports the consolidated model."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine_support import metrics, tiny_tasks, train
from training.model.export import load_export
from training.launch.launcher import free_port


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_two_nodes_on_loopback_train_and_export(tiny_encoder, data_dir, tmp_path, launcher):
    tasks = tiny_tasks(tiny_encoder, data_dir, tmp_path / "tasks")
    port, shared = free_port(), tmp_path / "shared-checkpoints"
    results: dict[int, str | BaseException] = {}
    logs: dict[int, list[str]] = {0: [], 1: []}

    def node(rank: int) -> None:
        try:
            results[rank] = train(tiny_encoder, tasks, tmp_path / f"node{rank}" / "run-mn", {"zero_stage": 3},
                                  logs[rank], launcher=launcher, nodes=2, processes=1, node_rank=rank,
                                  master_port=port, checkpoint_uri=str(shared), timeout_s=240)
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which fails the test
            results[rank] = exc

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results.values() if isinstance(r, BaseException)], (results, logs)
    launched = [next(l for l in logs[r] if l.startswith("launching:")) for r in (0, 1)]
    assert all("--node_rank=" in l or "--node_rank" in l for l in launched)
    export = Path(str(results[0]))
    load_export(export)
    assert not (tmp_path / "node1" / "run-mn" / "model").exists()  # only node 0 exports
    assert [r["step"] for r in metrics(tmp_path / "node0" / "run-mn")] == [2, 4, 6, 8]
    # both nodes' ZeRO-3 shards landed in the shared store, and the final tag is complete
    final = shared / "run-mn" / "step_00000008"
    assert (final / "COMPLETE").is_file()
    assert len(list(final.glob("zero_pp_rank_*_optim_states.pt"))) == 2
