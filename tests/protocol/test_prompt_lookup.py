"""The incremental prompt lookup (NgramIndex) answers exactly what the rule
(lookup_continuation) answers, query after query as the committed text grows with drafted tails
past it, and starts over when the committed text is not a continuation of what it indexed."""
import random

from protocol.prompt_lookup import NgramIndex, lookup_continuation


def test_the_index_answers_what_the_rule_answers_as_the_text_grows():
    rng = random.Random(0)
    for trial in range(200):
        vocab = rng.choice([2, 3, 5, 20])  # small vocabularies repeat: many n-grams match
        truth = [rng.randrange(vocab) for _ in range(rng.randrange(1, 150))]
        index, committed = NgramIndex(4, 2), 1
        while committed <= len(truth):
            query = truth[:committed] + [rng.randrange(vocab) for _ in range(rng.randrange(0, 6))]
            length = rng.randrange(0, 8)
            assert index.lookup(query, committed, length) == lookup_continuation(query, 4, 2, length), trial
            committed += rng.randrange(1, 5)
        assert index.committed == truth[: len(index.committed)]


def test_a_committed_text_that_changed_is_indexed_anew():
    index = NgramIndex(3, 1)
    first = [1, 2, 3, 4, 1, 2]
    assert index.lookup(first, len(first), 2) == [3, 4]
    other = [7, 8, 9, 7, 8]  # shorter, different: not a continuation
    assert index.lookup(other, len(other), 2) == lookup_continuation(other, 3, 1, 2) == [9, 7]
    assert index.committed == other
