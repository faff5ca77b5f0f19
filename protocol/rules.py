"""Rules both processes apply, written once (torch-free, pure)."""
from __future__ import annotations


def draft_budget(max_new_tokens: int, num_new_tokens: int) -> int:
    """Draft tokens still worth verifying once `num_new_tokens` of `max_new_tokens` are committed:
    every round the target adds one token of its own after the accepted draft tokens."""
    return max_new_tokens - num_new_tokens - 1


def is_usable_at(base_length: int, trunk_length: int, committed_length: int) -> bool:
    """The rebase rule: a draft built on committed length b with a trunk of t tokens is usable
    at committed length L iff b == L (drafted right here) or b < L < b + t (the text grew along
    its trunk, which still reaches past the committed end; its first L - b tokens must then
    equal the committed ones, which the verifier checks token by token)."""
    return base_length == committed_length or base_length < committed_length < base_length + trunk_length
