"""Retries for object-store calls: an endpoint that is down for a while (a restart, a network
blip) is waited for with backoff; an answer that will not change (no such key, access denied)
is raised at once. s3fs and botocore already retry each request for a few seconds; this covers
outages longer than that, around whole operations (one file's upload, a marker's write)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 4
FIRST_DELAY_S = 1.0  # then 2, 4: with s3fs's own retries an outage of about half a minute is ridden out
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def transient(exc: BaseException) -> bool:
    """A failure to reach the store: connection refused or reset, a timeout, an endpoint that is
    gone (botocore's EndpointConnectionError and kin are not OSErrors; they are named so)."""
    if isinstance(exc, PERMANENT):
        return False
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return any(k.__name__ in ("ConnectionError", "EndpointConnectionError", "ConnectionClosedError",
                              "ReadTimeoutError", "ConnectTimeoutError") for k in type(exc).__mro__)


def with_retries(call: Callable[[], T], what: str, attempts: int | None = None,
                 first_delay_s: float | None = None, on_retry: Callable[[str], None] | None = None) -> T:
    """`call()`, again after a transient failure (up to `attempts` in all, doubling the delay);
    the module's ATTEMPTS and FIRST_DELAY_S when not given (read per call: tests shorten them)."""
    attempts = ATTEMPTS if attempts is None else attempts
    delay = FIRST_DELAY_S if first_delay_s is None else first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sorted by `transient`, re-raised otherwise
            if attempt == attempts or not transient(exc):
                raise
            message = f"{what} failed ({type(exc).__name__}: {exc}); attempt {attempt + 1} of {attempts} in {delay:g} s"
            (on_retry or log.warning)(message)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
