"""One alias moves at a time: MLflow sets an alias without compare-and-set, so two runs finishing at
once could each gate against the same champion and the later write win, whichever scored higher.
Reading the champion, gating and moving the alias happen while holding the one slot of a Prefect
global concurrency limit named after the model and the alias (created on first use, visible and
editable under Concurrency in the Prefect UI). The slot is a lease: a holder that dies frees it
when the lease runs out."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

LEASE_S = 300.0  # a promotion reads and writes a few registry entries: seconds, not minutes


def lock_name(model_name: str, alias: str) -> str:
    """The limit's name; Prefect refuses / % & > < in names."""
    return "mlflow-alias-" + re.sub(r"[^A-Za-z0-9._-]", "_", f"{model_name}@{alias}".replace("@", "."))


@contextmanager
def alias_lock(model_name: str, alias: str, timeout_s: float = 900.0) -> Iterator[None]:
    """Hold `model_name`'s `alias` for the body; waits at most `timeout_s` (TimeoutError past it)."""
    with one_slot(lock_name(model_name, alias), timeout_s, LEASE_S):
        yield


def retrain_lock_name(model_name: str) -> str:
    return "mtl-retrain-" + re.sub(r"[^A-Za-z0-9._-]", "_", model_name)


@contextmanager
def retrain_lock(model_name: str, timeout_s: float) -> Iterator[None]:
    """At most one retraining run per registered model, whichever deployment started it: a
    nightly and an on-demand run of the same model never train and gate at once. The lease is
    renewed while the run holds it, so a long training keeps it; a dead holder frees it when the
    lease runs out."""
    with one_slot(retrain_lock_name(model_name), timeout_s, LEASE_S):
        yield


@contextmanager
def one_slot(name: str, timeout_s: float, lease_s: float) -> Iterator[None]:
    """The one slot of the global concurrency limit `name` (created on first use) for the body."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:  # first use (looked up first: a refused duplicate is a server-side error log)
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # created by another run between the two calls
                pass
    # strict: a limit deleted between the two calls fails instead of running unlocked
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=lease_s, strict=True):
        yield
