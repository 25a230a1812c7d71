"""`mtl serve` as a subprocess for tests: started in its own process group, waited for on /ping,
stopped at the end; and the small HTTP calls the tests make to it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import stop_group

SERVER_START_TIMEOUT_S = 300  # imports torch and transformers on a busy 2-core machine
SWAP_TIMEOUT_S = 30
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def invoke(url: str, payload: dict) -> tuple[int, dict]:
    return post(url, json.dumps(payload).encode())


def served_version(url: str) -> dict:
    status, body = http_get(f"{url}/version")
    assert status == 200, body
    return json.loads(body)


def wait_for_version(url: str, version: str) -> dict:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while (info := served_version(url))["version"] != version:
        if time.monotonic() > deadline:
            pytest.fail(f"/version still says {info} {SWAP_TIMEOUT_S} s after the alias moved to {version}")
        time.sleep(0.3)
    return info


@contextmanager
def serving(model_uri: str, tracking_uri: str, log: Path, poll_s: float = 1.0,
            env: dict[str, str] | None = None) -> Iterator[str]:
    """`mtl serve MODEL_URI --poll-s N`, the installed CLI; yields its URL."""
    port = free_port()
    mtl = Path(sys.executable).with_name("mtl")
    command = [str(mtl)] if mtl.exists() else [sys.executable, "-m", "flows.cli"]
    command += ["serve", model_uri, "--poll-s", str(poll_s), "--port", str(port), "--tracking-uri", tracking_uri]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                env=env)
    url = f"http://127.0.0.1:{port}"
    with running(proc, url, log, "mtl serve"):
        yield url


@contextmanager
def running(proc: subprocess.Popen, url: str, log: Path, what: str) -> Iterator[None]:
    """A server process (its own process group) waited for on `url`/ping, stopped at the end."""
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if http_get(f"{url}/ping")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on {url}/ping after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield
    finally:
        stop_group(proc)
