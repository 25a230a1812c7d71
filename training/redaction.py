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
    """A tracking URI fit for a log or an artifact: credentials in it are replaced. The host and
    port stay as written (an IPv6 host keeps its brackets, a bad port does not raise), and a URI
    urllib cannot split, or one inside another's query, is masked like any text."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return mask_userinfo(uri)
    if "@" not in parts.netloc:
        return mask_userinfo(uri)
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return mask_userinfo(urlunsplit(parts._replace(netloc=netloc)))
