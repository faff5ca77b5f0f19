"""Token trees for verification: trunk + branches merged into a trie, its mask and positions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenTree:
    """Node 0 is the root (the last committed token); every other node is a draft token.
    Children of a node carry distinct tokens, so greedy acceptance has one path."""

    tokens: list[int]
    parents: list[int]  # parents[0] == -1
    depths: list[int]  # depth 0 = root
    trunk_nodes: list[int]  # node of trunk[i]
    branch_nodes: list[list[int]]  # node of branches[b][j]
    lookup_nodes: list[int] = ()  # node of lookup[j] (a branch at the root, beside the trunk)

    def children(self) -> list[dict[int, int]]:
        table: list[dict[int, int]] = [{} for _ in self.tokens]
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                table[parent][self.tokens[node]] = node
        return table

    def visibility(self) -> torch.Tensor:
        """(n, n) bool: a node sees itself and its ancestors, nothing else (the tree mask)."""
        n = len(self.tokens)
        visible = torch.zeros(n, n, dtype=torch.bool)
        for node in range(n):
            cursor = node
            while cursor >= 0:
                visible[node, cursor] = True
                cursor = self.parents[cursor]
        return visible


def build_tree(root: int, trunk: Sequence[int], branches: Sequence[Sequence[int]],
               lookup: Sequence[int] = ()) -> TokenTree:
    """Trunk as a chain under the root; branches hang after the trunk's last token; `lookup`
    (the verifier's own prompt-lookup continuation) hangs at the root beside the trunk, so a
    trunk rejected at its first token still leaves it a path. All merged into a trie so a
    shared prefix is verified once. A node at depth d sits at position
    base + d, where it would be if its path were accepted."""
    tokens, parents, depths = [int(root)], [-1], [0]
    children: list[dict[int, int]] = [{}]

    def child(parent: int, token: int) -> int:
        node = children[parent].get(token)
        if node is None:
            node = len(tokens)
            tokens.append(int(token))
            parents.append(parent)
            depths.append(depths[parent] + 1)
            children.append({})
            children[parent][int(token)] = node
        return node

    cursor = 0
    trunk_nodes = []
    for token in trunk:
        cursor = child(cursor, int(token))
        trunk_nodes.append(cursor)
    branch_nodes = []
    for branch in branches:
        node, nodes = cursor, []
        for token in branch:
            node = child(node, int(token))
            nodes.append(node)
        branch_nodes.append(nodes)
    lookup_nodes, node = [], 0
    for token in lookup:
        node = child(node, int(token))
        lookup_nodes.append(node)
    return TokenTree(tokens, parents, depths, trunk_nodes, branch_nodes, lookup_nodes)


def accept_greedy(tree: TokenTree, predictions: Sequence[int]) -> tuple[list[int], int]:
    """Greedy tree acceptance. Returns (accepted node ids, the target's next token).

    Rule: from the root, step to the child whose token equals the target's argmax at the
    current node; stop where no child does. Each accepted token is exactly what the target
    alone would emit there, so output equals the target's greedy decoding. The target's
    argmax at the last accepted node is emitted too: the correction after a mismatch, or
    the bonus token after a fully matched trunk or branch (never dropped).
    """
    children = tree.children()
    path: list[int] = []
    node = 0
    while (nxt := children[node].get(int(predictions[node]))) is not None:
        path.append(nxt)
        node = nxt
    return path, int(predictions[node])
