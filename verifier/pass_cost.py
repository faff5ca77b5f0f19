"""What a round costs, measured online: the target pass for its size, and the verifier's wait for
drafts of each length (the cost half of the speculation decision, verifier.speculation). On a GPU a pass of 64 tokens costs about what one token does;
on a CPU each token costs compute (here ~40 ms for 1 token, ~55 ms for 9 on two threads), and a
batched pass pads every row to the widest tree."""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from statistics import median

COST_WINDOW = 64  # recent passes (and draft waits) the cost models are fitted to
RIDGE = 1e-9  # keeps the fit defined when every pass had the same number of rows


class PassCostModel:
    """Seconds per target pass: c(B, w) = a + b*B*w + d*B for B rows padded to width w, fitted
    by least squares to the last COST_WINDOW passes. b is the cost of a token, d that of a row
    (its padded cache, its commit). A fit, not a table, so a size measured once (cold, say)
    cannot mislead for long, and every pass informs the estimate of every size; a window whose
    passes were all of one size keeps the fit it had. Two terms join
    once passes that need them were timed (each >= 0, else left out):
    - where the engine skips padding in its linear layers (kvcache.packed.only_tokens), w is the
      rows' mean width and the P padded slots up to the widest row still cost attention, norms
      and rotary: + p*P;
    - a pass while the drafter drafts on the same machine (fewer threads, shared memory
      bandwidth) costs + s more than one while it rests."""

    def __init__(self) -> None:
        self.samples: deque[tuple[int, float, float, float, bool]] = deque(maxlen=COST_WINDOW)
        self.coefficients: tuple[float, float, float] | None = None
        self.padding_cost = 0.0
        self.drafting_cost = 0.0

    def observe(self, num_rows: int, width: float, seconds: float, padding: float = 0.0,
                is_drafting: bool = False) -> None:
        self.samples.append((num_rows, width, seconds, padding, is_drafting))
        fitted = _fit(self.samples)
        if fitted is not None:  # a window of one size (every pass alike, lately) keeps the last fit
            self.coefficients, self.padding_cost, self.drafting_cost = fitted[:3], fitted[3], fitted[4]

    def one_token_pass(self) -> float | None:
        """What a one-token pass of one row costs: the fit's estimate, else the quickest pass
        timed so far (an upper bound), else None (nothing timed yet)."""
        estimate = self.estimate(1, 1)
        if estimate is not None:
            return estimate
        return min((seconds for *_, seconds, _, _ in self.samples), default=None)

    def estimate(self, num_rows: int, width: float, padding: float = 0.0, is_drafting: bool = False) -> float | None:
        """c(B, w) + p*P (+ s while drafting), never below a microsecond; None until passes of
        two sizes were timed. w is the width the pass computes: its widest row, or its mean
        where padding is skipped."""
        if self.coefficients is None:
            return None
        a, b, d = self.coefficients
        seconds = a + b * num_rows * width + d * num_rows + self.padding_cost * padding
        return max(seconds + (self.drafting_cost if is_drafting else 0.0), 1e-6)


def _fit(samples: Sequence[tuple[int, float, float, float, bool]]) -> tuple[float, ...] | None:
    """Least squares for seconds ~ a + b*(rows*width) + d*rows [+ p*padding] [+ s*drafting]
    (normal equations, ridge on all but a): an optional term only where the passes vary in it,
    and only if its coefficient comes out >= 0. Each size counts as the median of its passes,
    weighed by their number, so one slow pass (a cold kernel, a preempted process) of a size
    run a few times cannot make that size look slow."""
    if len({rows * width for rows, width, *_ in samples}) < 2:
        return None  # no spread in size: no slope to speak of
    groups: dict[tuple[int, float, float, bool], list[float]] = {}
    for rows, width, seconds, padding, is_drafting in samples:
        groups.setdefault((rows, width, padding, is_drafting), []).append(seconds)
    points = [(rows, width, median(times), padding, is_drafting) for (rows, width, padding, is_drafting), times in groups.items()]
    weights = [float(len(times)) for times in groups.values()]
    ys = [seconds for _, _, seconds, _, _ in points]
    optional = [i for i in (3, 4) if len({s[i] for s in points}) > 1]  # padding, drafting
    while True:
        xs = [(1.0, float(s[0] * s[1]), float(s[0]), *(float(s[i]) for i in optional)) for s in points]
        solved = _least_squares(xs, ys, weights)
        if solved is None:
            return None
        negative = [i for i, value in zip(optional, solved[3:]) if value < 0]
        if not negative:
            extra = dict(zip(optional, solved[3:]))
            return (*solved[:3], extra.get(3, 0.0), extra.get(4, 0.0))
        optional = [i for i in optional if i != negative[0]]


def _least_squares(xs: list[tuple[float, ...]], ys: list[float], weights: list[float]) -> tuple[float, ...] | None:
    n, total = len(xs[0]), sum(weights)
    matrix = [[sum(w * x[i] * x[j] for x, w in zip(xs, weights)) + (RIDGE * total if i == j and i else 0.0)
               for j in range(n)] for i in range(n)]
    return _solve(matrix, [sum(w * x[i] * y for x, y, w in zip(xs, ys, weights)) for i in range(n)])


def _solve(m: list[list[float]], v: list[float]) -> tuple[float, ...] | None:
    """Gaussian elimination with partial pivoting on an n x n system."""
    n = len(v)
    rows = [m[i][:] + [v[i]] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-15:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(n):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
    return tuple(rows[i][n] / rows[i][i] for i in range(n))


def cut_draft(trunk: Sequence[int], branches: Sequence[Sequence[int]], num_tokens: int
              ) -> tuple[list[int], list[list[int]]]:
    """The first `num_tokens` draft tokens: the trunk first, then branches in order (the last
    one kept may lose its tail; a branch prefix is still a valid path to verify)."""
    trunk = list(trunk[: max(num_tokens, 0)])
    room = num_tokens - len(trunk)
    kept: list[list[int]] = []
    for branch in branches:
        if room <= 0:
            break
        kept.append(list(branch[:room]))
        room -= len(kept[-1])
    return trunk, kept


class DraftWait:
    """Seconds the verifier stands idle before a pass, for the longest draft k asked of the
    round: w(0) = the median idle of rounds that asked for none; for k > 0 a draft drafted on
    the verdict costs w_fresh(k) = c + b*k, a Theil-Sen line (median of pairwise slopes, then the
    median intercept) through the median idle at each length asked, since any draft costs a pass
    or so of the drafter's plus its tokens; one drafted ahead (the speculation cache held the
    outcome, or a pre-draft on the chain came true) costs w_ahead, the median idle of such rounds,
    about a round trip. A round whose rows all verified a trunk can be drafted ahead (the drafter
    pre-drafts only for a trunk's outcomes), with the measured share h of such rounds that were:

        w(k) = h * w_ahead + (1 - h) * w_fresh(k),   h = 0 for a round after one with no trunk.

    Each kind keeps its last COST_WINDOW rounds, so none pushes another out, and medians
    leave a single stall (a drafter restarting, a preempted process) without weight."""

    def __init__(self) -> None:
        self.drafted: deque[tuple[int, float]] = deque(maxlen=COST_WINDOW)  # drafted on the verdict
        self.undrafted: deque[float] = deque(maxlen=COST_WINDOW)
        self.ahead: deque[float] = deque(maxlen=COST_WINDOW)  # drafted ahead
        self.came_ahead: deque[bool] = deque(maxlen=COST_WINDOW)  # rounds that could have been: were they?
        self.line = (0.0, 0.0)  # (c, b), refitted as drafted rounds come

    @property
    def num_drafted(self) -> int:
        """Rounds that asked for a draft, timed (drafted ahead or on the verdict)."""
        return len(self.drafted) + len(self.ahead)

    @property
    def hit_rate(self) -> float:
        """h: the share of rounds that could have been drafted ahead that were (0 before any)."""
        return sum(self.came_ahead) / len(self.came_ahead) if self.came_ahead else 0.0

    def observe(self, draft_length: int, seconds: float, could_be_ahead: bool = False, was_ahead: bool = False) -> None:
        """A round's idle before its pass; `could_be_ahead`: its drafted rows all verified a
        trunk the round before; `was_ahead`: their drafts were all drafted ahead."""
        seconds = max(seconds, 0.0)
        if draft_length <= 0:
            self.undrafted.append(seconds)
            return
        if could_be_ahead:
            self.came_ahead.append(was_ahead)
        if was_ahead:
            self.ahead.append(seconds)
            return
        self.drafted.append((draft_length, seconds))
        by_length: dict[int, list[float]] = {}
        for k, waited in self.drafted:
            by_length.setdefault(k, []).append(waited)
        points = sorted((k, median(waits)) for k, waits in by_length.items())  # one per length asked
        slopes = [(s2 - s1) / (k2 - k1) for i, (k1, s1) in enumerate(points) for k2, s2 in points[i + 1 :]]
        slope = max(median(slopes), 0.0) if slopes else points[0][1] / points[0][0]
        self.line = (max(median(w - slope * k for k, w in points), 0.0) if slopes else 0.0, slope)

    def estimate(self, draft_length: int, is_stale: bool = False, can_be_ahead: bool = False) -> float | None:
        """None until a round that asked for a draft was timed; `is_stale`: as if drafts cost
        no more waiting than rounds without (to see whether re-timing them could pay);
        `can_be_ahead`: the round may find its drafts drafted ahead (the rule above)."""
        if not self.num_drafted:
            return None
        base = median(self.undrafted) if self.undrafted else 0.0
        if draft_length == 0 or is_stale:
            return base
        ahead = max(median(self.ahead), base) if self.ahead else None
        if not self.drafted:  # every draft timed came ahead
            return ahead
        fixed, per_token = self.line
        fresh = max(fixed + per_token * draft_length, base)
        if not can_be_ahead or ahead is None:
            return fresh
        share = self.hit_rate
        return share * ahead + (1.0 - share) * fresh
