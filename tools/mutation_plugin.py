"""pytest plugin of the sampled mutation run (tools/mutation_sample.py): keeps every mutant's tests
in this process, fast and without servers.

Loaded with `-p tools.mutation_plugin` in the mutmut copy. It deselects
- tests marked `slow` (they launch DeepSpeed process groups or the production stack),
- tests that use a fixture which starts a server (SERVER_FIXTURES),
- the test ids in EXCLUDED, each with the reason,
and makes `subprocess.Popen` refuse a DeepSpeed launcher, a worker or a server, so a test that would
still start one fails the unmutated baseline, naming itself, instead of slowing every mutant down.
"""
from __future__ import annotations

import pytest

# fixtures that start a process or a server: the Prefect test server, the production stack, an
# `mlflow server`, a moto S3 server on loopback, `mtl serve` / `mlflow models serve`
SERVER_FIXTURES = frozenset({"prefect_engine", "production_stack", "mlflow_server", "s3", "server"})

# test id prefixes (file or file::test) left out, and why
EXCLUDED: dict[str, str] = {}


# a child process whose program (or `-m` module) is one of these is a training run or a server
REFUSED_PROGRAMS = frozenset({"deepspeed", "torchrun", "mlflow", "prefect", "mtl", "moto_server"})
REFUSED_MODULES = ("training.trainer.worker", "training.launch.")


class LaunchRefused(RuntimeError):
    """A test started a training run or a server inside the mutation run."""


def refused(args: object) -> str | None:
    words = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    for word in words:
        base = word.rsplit("/", 1)[-1]
        if base in REFUSED_PROGRAMS or base.startswith(REFUSED_MODULES):
            return word
    return None


def guarded_popen(popen: type) -> type:
    class Guarded(popen):  # type: ignore[misc, valid-type]
        mutation_guard = True

        def __init__(self, args: object, *rest: object, **kwargs: object) -> None:
            if (word := refused(args)) is not None:
                raise LaunchRefused(f"the mutation run starts no training run or server ({word!r}): deselect "
                                    "the test in tools/mutation_plugin.py (EXCLUDED) or mark it slow")
            super().__init__(args, *rest, **kwargs)

    return Guarded


def pytest_configure(config: pytest.Config) -> None:
    import subprocess

    if not getattr(subprocess.Popen, "mutation_guard", False):  # pytest runs again in the same process
        subprocess.Popen = guarded_popen(subprocess.Popen)  # type: ignore[misc]


def excluded(item: pytest.Item) -> bool:
    if item.get_closest_marker("slow") is not None:
        return True
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return any(item.nodeid.startswith(prefix) for prefix in EXCLUDED)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep = [item for item in items if not excluded(item)]
    dropped = [item for item in items if excluded(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
