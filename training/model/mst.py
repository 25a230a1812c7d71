"""Maximum spanning tree decoding for dependency parsing, in numpy.

Chu-Liu/Edmonds (Chu & Liu 1965; Edmonds 1967): the highest-scoring arborescence rooted at node 0,
non-projective, as graph-based parsers decode biaffine scores (Dozat & Manning 2017; McDonald et
al. 2005). A dependency tree has exactly one word attached to the root (UD's `root`), which the
plain algorithm does not ensure; `decode_tree` adds that constraint exactly: when the unconstrained
tree has several root children it solves, for each candidate root child r, the problem in which r
is the only arc out of the root, and keeps the best (the candidates are tried in order of an upper
bound on their score, and the search stops once no remaining bound can beat the best tree found;
Zmigrod et al. 2020, "Please Mind the Root", explain why simply picking one of the unconstrained
tree's root children is not exact).

Scores are a square matrix `scores[d, h]`: the score of word h heading word d, with node 0 the root
(row 0 is never read: the root has no head). Pure functions of their input; no torch.
"""
from __future__ import annotations

import numpy as np


def _find_cycle(heads: np.ndarray) -> list[int] | None:
    """One cycle of the head graph (nodes in it), or None; node 0 has no head."""
    state = np.zeros(len(heads), dtype=np.int8)  # 0 unseen, 1 on the current path, 2 done
    state[0] = 2
    for node in range(1, len(heads)):
        path = []
        while state[node] == 0:
            state[node] = 1
            path.append(node)
            node = int(heads[node])
        if state[node] == 1:  # came back to the current path: the cycle starts at `node`
            return path[path.index(node):]
        state[path] = 2
    return None


def _chu_liu_edmonds(scores: np.ndarray) -> np.ndarray:
    """Heads of the best arborescence rooted at 0 (`heads[0]` is -1). `scores` holds -inf for
    arcs that may not be used (self-loops, arcs into the root); every other node must have one
    finite incoming arc."""
    heads = scores.argmax(axis=1)
    heads[0] = -1
    cycle = _find_cycle(heads)
    if cycle is None:
        return heads
    # contract the cycle into one node c; the others keep their order, c comes last
    in_cycle = np.zeros(len(heads), dtype=bool)
    in_cycle[cycle] = True
    rest = np.flatnonzero(~in_cycle)
    members = np.asarray(cycle)
    kept = scores[members, heads[members]]  # the arc each cycle node has now
    # an arc h -> d into the cycle replaces d's cycle arc: its gain over it decides
    entering = scores[np.ix_(members, rest)] - kept[:, None]
    leaving = scores[np.ix_(rest, members)]  # c heading an outside node: its best member does
    size = len(rest)
    contracted = np.full((size + 1, size + 1), -np.inf)
    contracted[:size, :size] = scores[np.ix_(rest, rest)]
    contracted[size, :size] = entering.max(axis=0)
    contracted[:size, size] = leaving.max(axis=1)
    sub = _chu_liu_edmonds(contracted)
    out = np.empty(len(heads), dtype=np.int64)
    out[members] = heads[members]
    for i, node in enumerate(rest):
        if i == 0 and node == 0:
            out[0] = -1
        elif sub[i] == size:
            out[node] = members[leaving[i].argmax()]
        else:
            out[node] = rest[sub[i]]
    head_of_cycle = int(sub[size])
    broken = members[entering[:, head_of_cycle].argmax()]  # the member whose arc the entering one replaces
    out[broken] = rest[head_of_cycle]
    return out


def tree_score(scores: np.ndarray, heads: np.ndarray) -> float:
    """Sum of the arc scores of a tree given as `heads` of words 1..n (values 0..n)."""
    return float(scores[np.arange(1, len(heads) + 1), heads].sum())


def decode_tree(scores: np.ndarray) -> np.ndarray:
    """The highest-scoring dependency tree with exactly one word attached to the root.

    `scores`: `(n + 1, n + 1)` finite floats, `scores[d, h]` the score of h heading d (0 = root).
    Returns the heads of words 1..n (an int array of length n, values 0..n): every word has one
    head, exactly one word has head 0, and following heads from any word reaches 0 (no cycle)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"decode_tree needs an (n + 1) x (n + 1) score matrix with n >= 1 words, got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("decode_tree needs finite scores (a NaN or infinite arc score has no order)")
    words = scores.shape[0] - 1
    if words == 1:
        return np.zeros(1, dtype=np.int64)
    allowed = scores.copy()
    np.fill_diagonal(allowed, -np.inf)
    allowed[0] = -np.inf
    heads = _chu_liu_edmonds(allowed)[1:]
    if np.count_nonzero(heads == 0) == 1:
        return heads  # the best tree of all already has a single root child
    no_root = allowed.copy()
    no_root[:, 0] = -np.inf
    best_other = no_root[1:].max(axis=1)  # each word's best head besides the root
    # with r the only root child: r takes its root arc, every other word at best its best other head
    bounds = best_other.sum() - best_other + allowed[1:, 0]
    best, best_heads = -np.inf, heads
    for r in np.argsort(-bounds, kind="stable") + 1:
        if bounds[r - 1] <= best:
            break
        only = no_root.copy()
        only[r, 0] = allowed[r, 0]
        found = _chu_liu_edmonds(only)[1:]
        value = tree_score(scores, found)
        if value > best:
            best, best_heads = value, found
    return best_heads


def is_tree(heads: np.ndarray | list[int]) -> bool:
    """Whether `heads` (of words 1..n, values 0..n) is a dependency tree with one root child."""
    full = np.concatenate([[0], np.asarray(heads, dtype=np.int64)])
    n = len(full) - 1
    if n < 1 or full[1:].min() < 0 or full[1:].max() > n or np.count_nonzero(full[1:] == 0) != 1:
        return False
    if np.any(full[1:] == np.arange(1, n + 1)):
        return False
    return _find_cycle(np.where(np.arange(n + 1) == 0, -1, full)) is None
