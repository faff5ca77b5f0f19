"""validate_generate: semantic checks of a request against the serving model."""
from __future__ import annotations

import dataclasses

import pytest

from protocol.errors import ProtocolError
from protocol.messages import Generate
from protocol.validation import validate_generate

VALID = Generate(request_id="r1", prompt_ids=[1, 2, 3], max_new_tokens=16, temperature=0.8,
                 top_k=50, top_p=0.95, stop_token_ids=[0])


def test_valid_requests_pass():
    validate_generate(VALID, vocab_size=100, max_context=8)
    validate_generate(Generate(request_id="r2", prompt="hi"), vocab_size=100, max_context=8)
    validate_generate(dataclasses.replace(VALID, top_p=1.0, temperature=0.0, top_k=0), 100, 3)


@pytest.mark.parametrize("changes, names", [
    (dict(prompt_ids=[]), "empty prompt"),
    (dict(prompt="hi"), "not both"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=1_000_001), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(prompt_ids=[1, 100]), r"prompt_ids: token id 100 at \[1\].*vocab_size=100"),
    (dict(stop_token_ids=[100]), r"stop_token_ids\[0\]"),
    (dict(prompt_ids=list(range(9))), "max context of 8"),
])
def test_invalid_requests_raise(changes, names):
    with pytest.raises(ProtocolError, match=names) as info:
        validate_generate(dataclasses.replace(VALID, **changes), vocab_size=100, max_context=8)
    assert info.value.request_id == "r1"


def test_the_rebase_rule_hand_computed():
    from protocol.rules import is_usable_at

    assert is_usable_at(10, 0, 10) and is_usable_at(10, 4, 10)  # drafted right here
    assert is_usable_at(10, 4, 11) and is_usable_at(10, 4, 13)  # the text grew along the trunk
    assert not is_usable_at(10, 4, 14)  # the trunk is used up: nothing left to verify
    assert not is_usable_at(10, 4, 9)  # drafted ahead of the text: not yet
    assert not is_usable_at(10, 0, 11)


def test_the_draft_budget_leaves_room_for_the_targets_own_token():
    from protocol.rules import draft_budget

    assert draft_budget(10, 0) == 9 and draft_budget(10, 9) == 0 and draft_budget(10, 10) == -1
