import torch

from drafter.lookahead import build_pass_layout, longest_phrase_match
from protocol.prompt_lookup import lookup_continuation


def test_layout_positions_and_mask_hand_computed():
    # prefix [5, 6] after 3 cached tokens: c=6 at position 4; window 2 levels x 2 columns; one phrase
    layout = build_pass_layout([5, 6], 3, [[10, 11], [20, 21]], [[30, 31]])
    assert layout.tokens == [5, 6, 10, 11, 20, 21, 30, 31]
    assert layout.positions == [3, 4, 5, 6, 6, 7, 5, 6]
    assert layout.current_index == 1
    assert layout.last_row_indices == [4, 5]
    assert layout.phrase_indices == [[6, 7]]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0],  # 5
            [1, 1, 0, 0, 0, 0, 0, 0],  # 6 (c)
            [1, 1, 1, 0, 0, 0, 0, 0],  # level0 col0
            [1, 1, 1, 1, 0, 0, 0, 0],  # level0 col1
            [1, 1, 1, 0, 1, 0, 0, 0],  # level1 col0: level0 col0 + itself
            [1, 1, 1, 1, 0, 1, 0, 0],  # level1 col1: level0 cols 0..1 + itself
            [1, 1, 0, 0, 0, 0, 1, 0],  # phrase token 0
            [1, 1, 0, 0, 0, 0, 1, 1],  # phrase token 1
        ],
        dtype=torch.bool,
    )
    assert torch.equal(layout.visible, expected)
    assert layout.logit_indices == [1, 4, 5, 6, 7]


def test_third_level_sees_its_column_only():
    layout = build_pass_layout([1], 0, [[2, 3], [4, 5], [6, 7]], [])
    # level 2 col 1 (token 7, index 6) sees prefix, level0 cols 0..1, level1 col1 (index 4)
    assert layout.visible[6].nonzero().flatten().tolist() == [0, 1, 2, 4, 6]
    assert layout.positions[6] == 0 + 1 + 1 + 2


def test_longest_phrase_match():
    assert longest_phrase_match(4, [4, 5, 6], [5, 6, 9]) == 3
    assert longest_phrase_match(4, [4, 5, 6], [5, 7, 9]) == 2
    assert longest_phrase_match(3, [4, 5, 6], [5, 6, 9]) == 0


def test_lookup_prefers_the_longest_then_the_most_recent_match():
    #        0  1  2  3  4  5  6  7  8  9
    text = [1, 2, 3, 9, 9, 5, 2, 3, 7, 8, 1, 2, 3]
    # suffix [1, 2, 3] occurred at 0: what followed it was [9, 9, 5]
    assert lookup_continuation(text, 3, 1, 3) == [9, 9, 5]
    # only bigrams allowed: [2, 3] last occurred at 6, followed by [7, 8]
    assert lookup_continuation(text, 2, 2, 2) == [7, 8]
    assert lookup_continuation(text, 3, 1, 0) == []


def test_lookup_overlapping_runs_and_no_match():
    assert lookup_continuation([4, 4, 4, 4], 2, 1, 5) == [4]  # [4, 4] at 1 overlaps the suffix
    assert lookup_continuation([1, 2, 3, 4], 3, 1, 4) == []
    assert lookup_continuation([1, 2, 3, 2], 3, 2, 4) == []  # a unigram match is below min_ngram
    assert lookup_continuation([1, 2, 3, 2], 3, 1, 4) == [3, 2]
    assert lookup_continuation([7], 3, 1, 4) == []
