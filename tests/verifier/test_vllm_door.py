"""The vLLM door without vLLM: a real drafter process on a real socket, driven the way vLLM's
runner drives `propose` (rows of committed tokens after each step), each step verified by the
real target greedily as vLLM's rejection sampler would."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from models.loading import load_model, load_tokenizer, tokenizer_fingerprint
from tests.conftest import reference_greedy
from launch.door_metrics import DrafterMetrics
from protocol.curve import create_keys
from verifier.vllm_door import IDLE_S, DrafterDoor

PROMPTS = ["def add(a, b):", "Once upon a time", "import numpy as np\n"]


@pytest.fixture(scope="module")
def target(tiny_dirs):
    return load_model(tiny_dirs["target"]).eval()


def start_drafter(endpoint: str, target_dir: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "drafter", "--connect", endpoint, "--target", target_dir,
                             "--draft", "layers:0", "--gamma", "6", *flags], stderr=subprocess.DEVNULL)


def wait_for_drafter(door: DrafterDoor, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while door.is_absent and time.monotonic() < deadline:
        door.drain()
        time.sleep(0.05)
    assert not door.is_absent, "no drafter said Hello"


def verify(target, row: list[int], draft: list[int]) -> list[int]:
    """One target step on row + draft: the accepted draft prefix and the target's own next token."""
    with torch.no_grad():
        predicted = target(torch.tensor([row + draft])).logits[0, len(row) - 1 :].argmax(-1).tolist()
    accepted = 0
    while accepted < len(draft) and draft[accepted] == predicted[accepted]:
        accepted += 1
    return draft[:accepted] + [predicted[accepted]]


def decode(door: DrafterDoor, target, prompts: list[list[int]], num_new: int) -> tuple[list[list[int]], int]:
    """The rows decoded together until each has num_new tokens; (texts, draft tokens accepted)."""
    rows, accepted = [list(p) for p in prompts], 0
    drafts: list[list[int]] = [[] for _ in rows]
    while any(len(r) - len(p) < num_new for r, p in zip(rows, prompts)):
        live = [i for i, (r, p) in enumerate(zip(rows, prompts)) if len(r) - len(p) < num_new]
        for i in live:
            appended = verify(target, rows[i], drafts[i])
            accepted += len(appended) - 1
            rows[i] += appended
        proposed = door.step([rows[i] for i in live])
        drafts = [[] for _ in rows]
        for i, draft in zip(live, proposed):
            drafts[i] = draft
    return [r[len(p) : len(p) + num_new] for r, p in zip(rows, prompts)], accepted


@pytest.fixture
def door(tiny_dirs):
    tokenizer = load_tokenizer(tiny_dirs["target"])
    door = DrafterDoor("tcp://127.0.0.1:0", tokenizer_fingerprint(tokenizer), len(tokenizer), 6, draft_timeout_s=0.5)
    yield door
    door.socket.close()


def test_drafts_are_accepted_and_finished_rows_are_closed(door, target, tiny_dirs):
    tokenizer = load_tokenizer(tiny_dirs["target"])
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    drafter = start_drafter(door.endpoint, tiny_dirs["target"])
    try:
        wait_for_drafter(door)
        texts, accepted = decode(door, target, prompts, 64)
        assert texts == [reference_greedy(target, p, 64) for p in prompts]
        assert 0 < door.stats.num_accepted_tokens <= accepted  # it learns of a row's last step only if the row stays
        door.step([])  # the next step, without the finished rows: their sessions are closed
        assert len(door.sessions) == 0
    finally:
        drafter.kill()
        drafter.wait()


def test_rows_past_the_drafters_room_decode_alone_and_are_opened_as_room_frees(door, target, tiny_dirs):
    tokenizer = load_tokenizer(tiny_dirs["target"])
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    drafter = start_drafter(door.endpoint, tiny_dirs["target"], "--max-sessions", "1")
    try:
        wait_for_drafter(door)
        assert door.max_sessions == 1  # from its Hello
        rows = [p + verify(target, p, []) for p in prompts]
        for _ in range(3):
            door.step(rows)
            assert len(door.sessions) == 2
            assert sorted(session.asked >= 0 for session in door.sessions.values()) == [False, True]  # one there
            rows = [r + verify(target, r, []) for r in rows]
        assert len(door.decision.passes.samples) == 2  # steps 2 and 3 are timed: the row left alone decodes too
        alone = next(s for s in door.sessions.values() if s.asked < 0)
        row = next(r for r in rows if r[: len(alone.tokens)] == alone.tokens)
        door.step([row])  # the other row ended: its room goes to this one
        assert list(door.sessions.values()) == [alone] and alone.asked >= 0
        texts, accepted = decode(door, target, [row], 32)
        assert texts == [reference_greedy(target, row, 32)] and accepted > 0
    finally:
        drafter.kill()
        drafter.wait()


def test_a_killed_drafter_costs_one_timeout_and_a_restarted_one_is_re_synced(door, target, tiny_dirs):
    tokenizer = load_tokenizer(tiny_dirs["target"])
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    drafter = start_drafter(door.endpoint, tiny_dirs["target"])
    wait_for_drafter(door)
    row = prompt + verify(target, prompt, [])
    door.step([row])
    drafter.kill()
    drafter.wait()
    started = time.monotonic()
    for _ in range(20):  # vLLM goes on decoding alone: at most one wait of the timeout
        draft = door.step([row])[0]
        row += verify(target, row, draft)
    assert time.monotonic() - started < 0.5 + 5.0 and door.is_absent
    restarted = start_drafter(door.endpoint, tiny_dirs["target"])
    try:
        wait_for_drafter(door)
        before = door.stats.num_accepted_tokens
        texts, _ = decode(door, target, [row], 48)
        assert texts[0] == reference_greedy(target, row, 48)
        assert door.stats.num_drafter_handshakes == 2 and door.stats.num_accepted_tokens > before
    finally:
        restarted.kill()
        restarted.wait()


def test_rows_keep_their_sessions_by_text_and_rows_alike_get_one_each(door):
    """vLLM names no request: a row is the session whose text it extends, short prompts too."""
    short, long_ = [5, 6, 7], list(range(100, 140))
    door.step([short, long_, list(long_)])
    ids = set(door.sessions)
    assert len(ids) == 3
    door.step([long_ + [1], short + [9, 9], long_ + [2]])
    assert set(door.sessions) == ids  # each row found its own session again
    door.step([short + [9, 9, 4]])
    assert len(door.sessions) == 1 and door.sessions.popitem()[1].tokens == short + [9, 9, 4]


def test_a_row_without_a_draft_is_sent_its_prompt_lookup_and_each_lookup_is_judged(door):
    """No drafter yet: vLLM still gets the text's own continuation (the verifier's prompt
    lookup), and the decision learns how much of each was right from the text committed after."""
    row = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
    assert door.step([row]) == [[4, 5, 6, 7, 1]]  # after the latest earlier "1 2 3", at most 5 tokens
    session = next(iter(door.sessions.values()))
    door.step([row + [4, 5, 9]])  # vLLM accepted 4, 5 and sampled 9
    assert list(door.decision.traces[session.request_id].lookups) == [(len(row), 2)]
    assert door.counters["lookups_served"] == 1 and door.counters["drafts_served"] == 0
    assert door.step([[9, 8]]) == [[]]  # nothing to copy: no draft


def scrape(metrics: DrafterMetrics, door: DrafterDoor, name: str, seconds: float = 10.0) -> float:
    """The series `name` on the metrics page, once the door answered a question asked after now."""
    deadline, asked_after = time.monotonic() + seconds, time.monotonic()
    while time.monotonic() < deadline:
        metrics.poll()
        door.drain()  # what vLLM's next step does first
        if metrics.age.answered is not None and metrics.age.answered > asked_after:
            break
        time.sleep(0.05)
    with urllib.request.urlopen(metrics.url, timeout=5) as reply:
        page = reply.read().decode()
    return next(float(line.split()[-1]) for line in page.splitlines() if line.startswith(name + " "))


def test_the_drafters_counters_are_served_beside_vllms_metrics(door, target, tiny_dirs):
    """launch.door_metrics asks the door between steps and serves what it says: a drafter
    present, its drafts, the ones that were ready, and a SIGKILLed drafter's absence."""
    tokenizer = load_tokenizer(tiny_dirs["target"])
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    metrics = DrafterMetrics(door.endpoint, "127.0.0.1", 0)
    drafter = start_drafter(door.endpoint, tiny_dirs["target"])
    try:
        assert scrape(metrics, door, "ouroboros:drafter_present") == 0
        wait_for_drafter(door)
        decode(door, target, [prompt], 48)
        assert scrape(metrics, door, "ouroboros:drafter_present") == 1
        hits, misses = (scrape(metrics, door, f"ouroboros:predraft_{kind}_total") for kind in ("hits", "misses"))
        served = door.counters["drafts_served"]  # each was verified at the step after, but maybe the last
        assert served - 1 <= hits + misses <= served and hits + misses > 0
        assert scrape(metrics, door, "ouroboros:spec_decode_num_accepted_tokens_total") == door.stats.num_accepted_tokens
        drafter.kill()
        drafter.wait()
        row = prompt + verify(target, prompt, [])
        for _ in range(3):
            row += verify(target, row, door.step([row])[0])
        assert scrape(metrics, door, "ouroboros:drafter_present") == 0
    finally:
        drafter.kill()
        drafter.wait()
        metrics.close()


def test_once_vllm_stops_stepping_its_rows_sessions_are_closed(door):
    """vLLM calls propose only while requests run: the watch's tend() closes what the last
    step's rows left open once no step came for IDLE_S, and a row that comes back is re-opened."""
    door.step([[5, 6, 7], [8, 9]])
    door.tend()
    assert len(door.sessions) == 2  # it just stepped
    door.last_return -= IDLE_S + 1
    door.tend()
    assert door.sessions == {} and door.status().running + door.status().queued == 0
    door.step([[5, 6, 7, 1]])
    assert [s.tokens for s in door.sessions.values()] == [[5, 6, 7, 1]]


def test_with_curve_keys_only_a_drafter_holding_them_is_admitted(target, tiny_dirs, tmp_path):
    """`serve --verifier vllm --curve-keys DIR` (a drafter on another machine): one without the
    keys never completes the handshake, and vLLM decodes with the lookup; one with them drafts."""
    keys = str(create_keys(tmp_path / "keys"))
    tokenizer = load_tokenizer(tiny_dirs["target"])
    door = DrafterDoor("tcp://127.0.0.1:0", tokenizer_fingerprint(tokenizer), len(tokenizer), 6, draft_timeout_s=0.5,
                       curve_keys=keys)
    intruder = start_drafter(door.endpoint, tiny_dirs["target"])
    try:
        with pytest.raises(AssertionError, match="no drafter said Hello"):
            wait_for_drafter(door, seconds=20.0)  # its model loads in a few seconds; its Hello never gets through
        assert intruder.poll() is None and door.stats.num_drafter_handshakes == 0
        intruder.kill()
        drafter = start_drafter(door.endpoint, tiny_dirs["target"], "--curve-keys", keys)
        try:
            wait_for_drafter(door)
            prompts = [tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]]
            texts, accepted = decode(door, target, prompts, 48)
            assert texts == [reference_greedy(target, prompts[0], 48)] and door.counters["drafts_served"] > 0
        finally:
            drafter.kill()
            drafter.wait()
    finally:
        intruder.kill()
        intruder.wait()
        door.close()
