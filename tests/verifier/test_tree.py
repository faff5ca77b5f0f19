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


def test_the_lookup_hangs_at_the_root_beside_the_trunk_and_shares_its_prefix():
    tree = build_tree(9, [1, 2], [[3]], lookup=[1, 7, 8])
    assert tree.tokens == [9, 1, 2, 3, 7, 8]
    assert tree.parents == [-1, 0, 1, 2, 1, 4]  # 1 is shared with the trunk; 7 hangs under it
    assert tree.lookup_nodes == [1, 4, 5] and tree.trunk_nodes == [1, 2]
    apart = build_tree(9, [1, 2], [], lookup=[5, 6])
    assert apart.parents == [-1, 0, 1, 0, 3] and apart.depths == [0, 1, 2, 1, 2]
    path, nxt = accept_greedy(apart, [5, 0, 0, 6, 4])  # the target says 5: the trunk fails, the lookup holds
    assert [apart.tokens[n] for n in path] == [5, 6] and nxt == 4
