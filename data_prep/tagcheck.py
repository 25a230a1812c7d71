"""Does a column of a CoNLL file hold the tags the task expects? A column file names none of
its columns, so a wrong `tag_column` (or the default last column of a file laid out differently)
would otherwise train on the wrong thing without a word."""
from __future__ import annotations

import re
from collections import Counter
from typing import Literal

# the tag shapes of the BIO family (BIOES too): a tag column of another kind matches few of them
BIO_SHAPE = re.compile(r"^(O|[BIES]-.+)$")
# CoNLL-2000 phrase types: a chunk column has the BIO shape too, and sits next to the entity
# column in CoNLL-2003 files (token POS chunk NER), so the default last column hits it when
# the entity column is missing
CHUNK_TYPES = frozenset({"NP", "VP", "PP", "ADJP", "ADVP", "SBAR", "PRT", "CONJP", "INTJ", "LST", "UCP"})
# a tag set this large, and this large a share of the tokens, is a vocabulary: words, not tags
WORDLIKE_MIN_DISTINCT = 200
WORDLIKE_MIN_SHARE = 0.05

Scheme = Literal["plain", "bio"]
Verdict = Literal["ok", "not_bio", "chunks", "words"]


def _share(counts: Counter[str], keep: set[str]) -> float:
    total = sum(counts.values())
    return sum(counts[v] for v in keep) / total if total else 1.0


def judge(counts: Counter[str], scheme: Scheme, named: bool = False) -> Verdict:
    """What a column's values (value -> count) look like for a task of this scheme. A column
    the config names (`named`) may hold chunk tags (chunking is a fine bio task) or a large tag
    set; only a bio column without the BIO shape is refused then."""
    if scheme == "bio":
        if _share(counts, {v for v in counts if BIO_SHAPE.match(v)}) < 0.5:
            return "not_bio"
        typed = Counter({v: n for v, n in counts.items() if v != "O"})
        if not named and typed and _share(typed, {v for v in typed if v[2:] in CHUNK_TYPES}) >= 0.5:
            return "chunks"
        return "ok"
    total = sum(counts.values())
    if not named and len(counts) >= WORDLIKE_MIN_DISTINCT and len(counts) >= WORDLIKE_MIN_SHARE * total:
        return "words"
    return "ok"


def offending(value: str, verdict: Verdict) -> bool:
    """Whether one value is an instance of what is wrong with its column (to point at a line)."""
    if verdict == "not_bio":
        return not BIO_SHAPE.match(value)
    if verdict == "chunks":
        return value[2:] in CHUNK_TYPES
    return verdict == "words"


def describe(counts: Counter[str], verdict: Verdict) -> str:
    examples = ", ".join(repr(v) for v in [v for v, _ in counts.most_common() if offending(v, verdict)][:4])
    if verdict == "not_bio":
        return f"holds values that are not BIO tags ({examples}, ...)"
    if verdict == "chunks":
        return f"holds phrase-chunk tags ({examples}, ...), not entity tags"
    return f"holds {len(counts)} different values in {sum(counts.values())} tokens ({examples}, ...): words, not tags"
