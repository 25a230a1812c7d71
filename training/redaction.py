"""Credentials inside text bound for a log, an error message, an MLflow tag or a Prefect artifact.

Kept free of heavy imports: the config parser (no MLflow) and the registry (MLflow) both use it."""
from __future__ import annotations

import re

USERINFO = re.compile(r"//[^/\s@]+@")  # user[:password]@ in any URI inside a text


def mask_userinfo(text: str) -> str:
    """`text` with the user[:password]@ of every URI in it replaced by `***@`."""
    return USERINFO.sub("//***@", text)
