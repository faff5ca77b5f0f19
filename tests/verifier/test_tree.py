import torch

from verifier.tree import accept_greedy, build_tree


def test_trunk_and_branches_merge_into_a_trie():
    tree = build_tree(9, [1, 2], [[3, 4], [3, 5], [6]])
    assert tree.tokens == [9, 1, 2, 3, 4, 5, 6]
    assert tree.parents == [-1, 0, 1, 2, 3, 3, 2]
    assert tree.depths == [0, 1, 2, 3, 4, 4, 3]
    assert tree.trunk_nodes == [1, 2]
    assert tree.branch_nodes == [[3, 4], [3, 5], [6]]
    visible = tree.visibility()
    assert visible[5].nonzero().flatten().tolist() == [0, 1, 2, 3, 5]
    assert visible[6].nonzero().flatten().tolist() == [0, 1, 2, 6]
    assert torch.equal(visible.diagonal(), torch.ones(7, dtype=torch.bool))


def test_full_trunk_then_branch_keeps_the_bonus_token():
    tree = build_tree(9, [1, 2], [[3, 4], [3, 5]])
    # predictions per node: root->1, 1->2, 2->3, (3)->5, (4)->0, (5)->8
    path, nxt = accept_greedy(tree, [1, 2, 3, 5, 0, 8])
    assert [tree.tokens[n] for n in path] == [1, 2, 3, 5]
    assert nxt == 8  # the bonus after a fully matched branch is emitted


def test_rejection_mid_trunk_emits_the_correction():
    tree = build_tree(9, [1, 2, 3], [[4]])
    path, nxt = accept_greedy(tree, [1, 7, 0, 0, 0])
    assert [tree.tokens[n] for n in path] == [1]
    assert nxt == 7


def test_empty_draft_is_one_target_token():
    tree = build_tree(9, [], [])
    assert accept_greedy(tree, [42]) == ([], 42)
