"""Medusa's candidate tree: greedy construction, tree-attention inputs, longest accepted path.

Paper: Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads", arXiv:2401.10774, Sec. 2.1.2 (tree attention) and Sec. 2.3.3 (optimised tree).

Idea: each Medusa head proposes its top-k tokens for one future position. Instead of the
Cartesian product of all proposals, a sparse tree keeps the combinations most likely to be
accepted, and the base model verifies every node in ONE forward: each node attends to the
cache and to its ancestors only, at position id = start + depth, so every root-to-node path
sees exactly the context it would see if decoded on its own.

A tree is written as a list of paths, as in the official ``medusa_choices``: the path
``(i0, i1, ..., id-1)`` is the node at depth d whose token is head (d-1)'s rank-i_{d-1}
candidate, below the node ``(i0, ..., id-2)``. The root (depth 0, not listed) is the base
model's own next token. Example: ``[(0,), (1,), (0, 0)]`` = root → {head-0 top-1, head-0
top-2}, and head-1 top-1 below head-0 top-1.

Optimised tree (Sec. 2.3.3): with a_k^(i) the probability that head k's rank-i candidate is
correct (measured on data, heads assumed independent), the expected number of accepted
candidates of a tree is

    E[accepted] = Σ_{nodes (i0..id-1)} Π_{k<d} a_k^(ik)

Every path's product is at most its parent's, so adding nodes one at a time, always the one
with the largest product, keeps the tree prefix-closed and maximises E for each size.

Tests (``tests/llm/generation/test_medusa.py``): the greedy tree on a hand-made accuracy table, the
ancestor mask against running each path separately, validation errors, path selection.

Shapes: N tree nodes (root included), C cached tokens, K heads, k_max ranks.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from papernotes.errors import ConfigError, DataError

TreePath = tuple[int, ...]


@dataclass(frozen=True)
class MedusaTree:
    """A prefix-closed candidate tree. Nodes are in (depth, ranks) order, so parents come first.

    Node 0 is the root; node i >= 1 is ``paths[i - 1]``. Because nodes are sorted by depth,
    the tree cut at any depth is a prefix of the node list (see :meth:`truncate`).
    """

    paths: tuple[TreePath, ...]  # the non-root nodes, sorted by (depth, ranks)
    parents: torch.Tensor  # (N,) long: parent node index; -1 for the root
    depths: torch.Tensor  # (N,) long: 0 for the root; d = the head index + 1 of the node's token
    ranks: torch.Tensor  # (N,) long: rank of the node's token in its head's top-k (0 for the root)
    ancestors: torch.Tensor  # (N, N) bool: [i, j] = node j is node i or one of its ancestors

    @property
    def num_nodes(self) -> int:
        """N, the root included."""
        return self.parents.shape[0]

    @property
    def depth(self) -> int:
        """The deepest node's depth (0 for a root-only tree); the heads it needs."""
        return int(self.depths.max())

    @property
    def top_k(self) -> int:
        """Ranks the tree reads from each head: max rank + 1 (0 for a root-only tree)."""
        return int(self.ranks[1:].max()) + 1 if self.num_nodes > 1 else 0

    def truncate(self, max_depth: int) -> MedusaTree:
        """The subtree of nodes at depth <= ``max_depth`` (a prefix of the nodes, same indices)."""
        n = int((self.depths <= max(max_depth, 0)).sum())
        if n == self.num_nodes:
            return self
        return MedusaTree(
            self.paths[: n - 1], self.parents[:n], self.depths[:n], self.ranks[:n], self.ancestors[:n, :n]
        )

    def attention_mask(self, cache_length: int) -> torch.Tensor:
        """The 4-D bool mask (1, 1, N, C + N): every cached token, then ancestors-or-self only."""
        cached = torch.ones(self.num_nodes, cache_length, dtype=torch.bool)  # (N, C)
        return torch.cat((cached, self.ancestors), dim=1)[None, None]  # (1, 1, N, C + N)

    def position_ids(self, start: int) -> torch.Tensor:
        """(1, N): node i at start + depth_i, the position it would have on its own path."""
        return (start + self.depths)[None]

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to ``node`` (ascending: parents precede children)."""
        return self.ancestors[node].nonzero().flatten().tolist()


def build_tree(paths: Sequence[Sequence[int]]) -> MedusaTree:
    """A :class:`MedusaTree` from ``medusa_choices``-style paths (any order).

    Raises ConfigError for a negative rank, an empty or duplicated path, or a path whose
    parent is missing (the tree must be prefix-closed).
    """
    clean: list[TreePath] = []
    for raw in paths:
        path = tuple(int(r) for r in raw)
        if not path or min(path) < 0:
            raise ConfigError(f"tree path {tuple(raw)!r}: expected a non-empty tuple of ranks >= 0")
        clean.append(path)
    if len(set(clean)) != len(clean):
        duplicates = sorted({p for p in clean if clean.count(p) > 1})
        raise ConfigError(f"tree has duplicated path(s) {duplicates}")
    ordered = tuple(sorted(clean, key=lambda p: (len(p), p)))
    index = {path: i + 1 for i, path in enumerate(ordered)}  # node index; 0 is the root
    n = len(ordered) + 1
    parents = torch.full((n,), -1, dtype=torch.long)
    depths = torch.zeros(n, dtype=torch.long)
    ranks = torch.zeros(n, dtype=torch.long)
    ancestors = torch.eye(n, dtype=torch.bool)
    for path, node in index.items():
        if len(path) > 1 and path[:-1] not in index:
            raise ConfigError(
                f"tree path {path} has no parent: add {path[:-1]} (paths must be prefix-closed)"
            )
        parent = index[path[:-1]] if len(path) > 1 else 0
        parents[node], depths[node], ranks[node] = parent, len(path), path[-1]
        ancestors[node] |= ancestors[parent]  # the parent's row is complete: it sorts earlier
    return MedusaTree(ordered, parents, depths, ranks, ancestors)


def chain_tree(depth: int) -> list[TreePath]:
    """Each head's top-1 only: ``[(0,), (0, 0), ...]``, the tree-less Medusa of Sec. 2.1.2."""
    return [(0,) * d for d in range(1, depth + 1)]


def rank_accuracy(topk_accuracy: torch.Tensor) -> torch.Tensor:
    """Per-rank accuracy a_k^(i) (K, k_max) from cumulative top-k accuracy (K, k_max).

    Top-k accuracy counts the target anywhere in the first k ranks, so rank i's own share is
    the difference of consecutive columns.
    """
    acc = topk_accuracy.double()
    return torch.diff(acc, dim=-1, prepend=torch.zeros_like(acc[..., :1])).clamp(min=0)


def expected_accepted(paths: Sequence[Sequence[int]], topk_accuracy: torch.Tensor) -> float:
    """E[accepted candidates per step] = Σ_nodes Π_k a_k^(ik) (Sec. 2.3.3); tokens per step is 1 + this."""
    a = rank_accuracy(topk_accuracy)
    total = 0.0
    for path in paths:
        prob = 1.0
        for k, i in enumerate(path):
            prob *= float(a[k, i])
        total += prob
    return total


def greedy_tree(topk_accuracy: torch.Tensor, num_nodes: int) -> list[TreePath]:
    """The ``num_nodes``-node tree (root excluded) that maximises E[accepted], built greedily.

    ``topk_accuracy`` is (K, k_max) cumulative top-k accuracy per head, as
    :func:`papernotes.llm.generation.medusa.train.head_topk_accuracy` measures it. Nodes are added one at a
    time, always the frontier path with the largest product of rank accuracies (ties: the
    shallower, then lexicographically smaller path). Nodes whose product is 0 add nothing
    and are never added, so the tree may come out smaller than ``num_nodes``.
    """
    if topk_accuracy.dim() != 2:
        raise ConfigError(f"topk_accuracy must be (num_heads, k_max), got {tuple(topk_accuracy.shape)}")
    if num_nodes < 0:
        raise ConfigError(f"num_nodes must be >= 0, got {num_nodes}")
    a = rank_accuracy(topk_accuracy)
    K, k_max = a.shape
    frontier = [(-float(a[0, i]), 1, (i,)) for i in range(k_max)] if K else []  # (-product, depth, path)
    heapq.heapify(frontier)
    chosen: list[TreePath] = []
    while frontier and len(chosen) < num_nodes:
        neg_prob, depth, path = heapq.heappop(frontier)
        if -neg_prob <= 0.0:
            break  # everything left has product 0
        chosen.append(path)
        if depth < K:  # a child uses the next head; its product can only be smaller or equal
            for i in range(k_max):
                heapq.heappush(frontier, (neg_prob * float(a[depth, i]), depth + 1, (*path, i)))
    return sorted(chosen, key=lambda p: (len(p), p))


def longest_accepted_path(tree: MedusaTree, accepted: torch.Tensor) -> list[int]:
    """Root-to-node indices of the deepest node whose whole path is accepted.

    ``accepted`` (N,) bool says whether each node's token passes the acceptance test at its
    parent (the root's entry is ignored: it is always kept). Ties between equally deep
    nodes go to the lowest index, i.e. the best-ranked candidates.
    """
    if accepted.shape != (tree.num_nodes,):
        raise DataError(f"accepted must have shape ({tree.num_nodes},), got {tuple(accepted.shape)}")
    rejected = ~accepted.bool().cpu()
    rejected[0] = False
    path_ok = ~(tree.ancestors & rejected[None]).any(dim=-1)  # (N,): no rejected node on the path
    depth = torch.where(path_ok, tree.depths, -1)  # (N,)
    best = int(torch.argmax(depth))  # argmax returns the first maximum
    return tree.path_to(best)
