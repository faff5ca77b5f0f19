"""Greedy losslessness of the sequential engines against the target's own HF generate."""
import pytest

from drafter.config import DrafterConfig
from drafter.engine import DraftEngine
from models.loading import layers_draft
from launch.sequential import generate
from tests.conftest import reference_greedy, tiny_model
from verifier.engine import TargetEngine

CONFIGS = [
    DrafterConfig(),
    DrafterConfig(gamma=1, window=0, ngram=2, branches=0, phrases_checked=0),
    DrafterConfig(gamma=3, window=2, ngram=3, pool_size=4, branches=1, phrases_checked=2),
    DrafterConfig(gamma=12, window=6, ngram=6, pool_size=20, branches=5, phrases_checked=8),
    DrafterConfig(gamma=5, window=3, ngram=5, pool_size=2, branches=3, seed_pool_from_text=False),
    DrafterConfig(gamma=4, window=2, ngram=3, branches=1, lookup_tokens=5, lookup_min_ngram=1),
]
PROMPT = [7, 19, 23, 7, 19, 60, 61, 2, 44, 7, 19]


def check_invariants(t_session, d_session, result):
    """Asserted after every round in both engines (docs/architecture.md, "Caches in step")."""
    assert t_session.cache_length == len(t_session.tokens) - 1
    assert d_session.tokens[: d_session.num_committed] == t_session.tokens
    assert d_session.cache_length <= len(d_session.tokens) - 1


def drafts(target, arch):
    return {
        "self": target,
        "random": tiny_model(arch, seed=123),
        "shared-layer": layers_draft(target, [0]),
    }


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("draft_kind", ["self", "random", "shared-layer"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"g{c.gamma}w{c.window}n{c.ngram}k{c.branches}")
def test_greedy_identical_to_target(arch, draft_kind, config):
    target = tiny_model(arch)
    ref = reference_greedy(target, PROMPT, 72)
    drafter = DraftEngine(drafts(target, arch)[draft_kind], config)
    # every round drafts --gamma tokens: identity must hold at any length the decision may pick
    result = generate(TargetEngine(target), drafter, PROMPT, 72, on_round=check_invariants, draft_length=config.gamma)
    assert result.tokens == ref
    assert result.finish_reason == "length"
    if draft_kind == "self" and config.gamma > 1:
        assert result.metrics["tokens_per_round"] > 2  # a perfect draft is really used


@pytest.mark.parametrize("draft_length", [None, 0, 3])
def test_decided_and_fixed_lengths_stay_identical(draft_length):
    """The decision's lengths (None: measured here), and fixed ones, 0 included, are lossless."""
    target = tiny_model("llama")
    drafter = DraftEngine(tiny_model("llama", seed=123), DrafterConfig(gamma=8, window=0, phrases_checked=0))
    result = generate(TargetEngine(target), drafter, PROMPT, 120, on_round=check_invariants,
                      draft_length=draft_length)
    assert result.tokens == reference_greedy(target, PROMPT, 120)
    if draft_length is not None:
        assert result.metrics["drafted_tokens"] <= draft_length * result.metrics["rounds"]


def test_drafter_cache_matches_its_tokens_after_each_draft():
    target = tiny_model("llama")
    drafter = DraftEngine(target, DrafterConfig(gamma=6))
    session = drafter.open(PROMPT)
    for _ in range(3):
        drafter.draft(session)
        assert session.cache_length == len(session.tokens) - 1
        assert session.num_drafted >= 6
        drafter.sync(session, session.tokens[session.num_committed : session.num_committed + 2] + [0])


@pytest.mark.parametrize("max_new", [1, 2, 5, 13])
def test_max_new_tokens_reached_mid_draft(max_new):
    target = tiny_model("llama")
    ref = reference_greedy(target, PROMPT, max_new)
    result = generate(TargetEngine(target), DraftEngine(target, DrafterConfig(gamma=8)), PROMPT, max_new, draft_length=8)
    assert result.tokens == ref and len(result.tokens) == max_new


@pytest.mark.parametrize("draft_kind", ["self", "random"])
def test_stop_token_inside_a_draft_or_branch(draft_kind):
    target = tiny_model("llama")
    ref = reference_greedy(target, PROMPT, 64)
    for stop_at in (3, 10, 30):
        stop = ref[stop_at]
        expected = ref[: ref.index(stop) + 1]
        drafter = DraftEngine(drafts(target, "llama")[draft_kind], DrafterConfig(gamma=8, branches=3))
        result = generate(TargetEngine(target), drafter, PROMPT, 64, stop_token_ids=[stop], draft_length=8)
        assert result.tokens == expected
        assert result.finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"gamma": 0}, "--gamma"), ({"ngram": 1}, "--ngram"), ({"window": -1}, "--window"),
     ({"branches": -2}, "--branches"), ({"pool_size": 0}, "--pool-size")],
)
def test_nonsense_config_is_refused(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        DrafterConfig(**kwargs)


def test_bad_generate_arguments():
    target = tiny_model("llama")
    with pytest.raises(ValueError, match="empty"):
        generate(TargetEngine(target), DraftEngine(target, DrafterConfig()), [], 8)
    with pytest.raises(ValueError, match="max-new-tokens"):
        generate(TargetEngine(target), DraftEngine(target, DrafterConfig()), [1, 2], 0)
