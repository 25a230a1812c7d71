"""What the benchmark scripts share (not a script itself): the machine's name for the record and
how a result is written."""
from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(out: str | Path, result: dict[str, Any], table: Callable[[dict[str, Any]], str]) -> None:
    """The JSON to `out` (its folder made), then the JSON and the human table on stdout."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("=== table ===")
    print(table(result))
