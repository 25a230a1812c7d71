"""Credentials inside text bound for a log, an error message, an MLflow tag or a Prefect artifact.

Kept free of heavy imports: the config parser (no MLflow) and the registry (MLflow) both use it."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# user[:password]@ in any URI inside a text, up to the last `@` before the path: a password that
# holds an unescaped `@` is masked whole
USERINFO = re.compile(r"//[^/\s]+@")


def mask_userinfo(text: str) -> str:
    """`text` with the user[:password]@ of every URI in it replaced by `***@`."""
    return USERINFO.sub("//***@", text)


def redact_uri(uri: str) -> str:
    """A tracking URI fit for a log or an artifact: credentials in it are replaced."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = "***@" + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
