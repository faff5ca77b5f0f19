import pytest

from drafter.pool import PhrasePool


def test_order_and_move_to_end():
    pool = PhrasePool(phrase_length=2, max_per_key=3)
    pool.add(1, [2, 3])
    pool.add(1, [4, 5])
    pool.add(1, [2, 3])  # re-inserting moves it to the end
    assert pool.phrases(1) == [(4, 5), (2, 3)]
    assert pool.most_recent(1, 1) == [(2, 3)]


def test_eviction_at_g_drops_oldest():
    pool = PhrasePool(phrase_length=1, max_per_key=2)
    for token in (10, 11, 12):
        pool.add(0, [token])
    assert pool.phrases(0) == [(11,), (12,)]
    assert len(pool) == 2


def test_dedupe_and_length_rules():
    pool = PhrasePool(phrase_length=3, max_per_key=5)
    pool.add(7, [1, 2, 3, 4])  # cut to phrase length
    pool.add(7, [1, 2, 3])
    pool.add(7, [1, 2])  # too short: ignored
    assert pool.phrases(7) == [(1, 2, 3)]
    assert pool.phrases(8) == []


def test_add_from_text_harvests_ngrams():
    pool = PhrasePool(phrase_length=2, max_per_key=5)
    pool.add_from_text([1, 2, 3, 1, 2, 4])
    assert pool.phrases(1) == [(2, 3), (2, 4)]
    assert pool.phrases(2) == [(3, 1)]
    assert pool.phrases(3) == [(1, 2)]


def test_save_load_round_trip(tmp_path):
    pool = PhrasePool(phrase_length=2, max_per_key=3)
    for key, phrase in [(1, [2, 3]), (1, [4, 5]), (9, [8, 7]), (1, [2, 3])]:
        pool.add(key, phrase)
    path = tmp_path / "pool.json"
    pool.save(path)
    loaded = PhrasePool.load(path)
    assert loaded.phrases(1) == pool.phrases(1) == [(4, 5), (2, 3)]
    assert loaded.phrases(9) == [(8, 7)]
    assert (loaded.phrase_length, loaded.max_per_key) == (2, 3)


def test_load_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot load phrase pool"):
        PhrasePool.load(path)
