"""What a target pass costs for its size, measured online, and how wide a batched pass pays.

On a GPU a pass of 64 tokens costs about what one token does, so every draft token is worth
verifying. On a CPU each token costs compute (here ~70 ms for 1 token, ~170 ms for 8), and a
batched pass pads every row to the widest tree, so a draft token that is seldom accepted
slows every request in the batch. The verifier therefore times its passes and cuts the trees
of a batch to the width that commits the most tokens per second.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence

COST_WINDOW = 64  # recent passes the cost model is fitted to
YIELD_SMOOTHING = 0.25  # weight of the newest round in a request's draft yield
EXPLORE_AFTER = 8  # rounds a request may go without verified draft tokens before it tries again
RIDGE = 1e-9  # keeps the fit defined when every pass had the same number of rows


class PassCostModel:
    """Seconds per target pass: c(B, w) = a + b*B*w + d*B for B rows padded to width w, fitted
    by least squares to the last COST_WINDOW passes. b is the cost of a token, d that of a row
    (its padded cache, its commit). A fit, not a table, so a size measured once (cold, say)
    cannot mislead for long, and every pass informs the estimate of every size.
    Where the engine skips padding in its linear layers (kvcache.packed.only_tokens), w is the
    rows' mean width, and the P padded slots up to the widest row (B*widest - sum of widths)
    still cost attention, norms and rotary: + p*P, p fitted too once passes with padding were
    timed (padding_cost; 0 before, and for engines that pad, where b covers it)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[int, float, float, float]] = deque(maxlen=COST_WINDOW)
        self.coefficients: tuple[float, float, float] | None = None
        self.padding_cost = 0.0

    def observe(self, num_rows: int, width: float, seconds: float, padding: float = 0.0) -> None:
        self.samples.append((num_rows, width, seconds, padding))
        fitted = _fit(self.samples)
        self.coefficients, self.padding_cost = (None, 0.0) if fitted is None else (fitted[:3], fitted[3])

    def estimate(self, num_rows: int, width: float, padding: float = 0.0) -> float | None:
        """c(B, w) + p*P, never below a microsecond; None until passes of two sizes were timed.
        w is the width the pass computes: its widest row, or its mean where padding is skipped."""
        if self.coefficients is None:
            return None
        a, b, d = self.coefficients
        return max(a + b * num_rows * width + d * num_rows + self.padding_cost * padding, 1e-6)

    def break_even_yield(self, num_rows: int) -> float | None:
        """The yield below which no draft token pays in a pass of num_rows rows. Rule: widening
        B rows by one token costs b*B and commits sum(y) more; a plain pass commits B tokens in
        c(B, 1); so it pays iff mean(y) > b*B / c(B, 1)."""
        plain = self.estimate(num_rows, 1)
        return None if plain is None else max(self.coefficients[1], 0.0) * num_rows / plain


def _fit(samples: Sequence[tuple[int, float, float, float]]) -> tuple[float, float, float, float] | None:
    """Least squares for seconds ~ a + b*(rows*width) + d*rows [+ p*padding] (normal equations,
    ridge on all but a); the padding term only once some pass had padding, and p >= 0."""
    if len({rows * width for rows, width, _, _ in samples}) < 2:
        return None  # no spread in size: no slope to speak of
    if any(padding > 0 for *_, padding in samples):
        xs = [(1.0, float(rows * width), float(rows), float(padding)) for rows, width, _, padding in samples]
        solved = _least_squares(xs, [s for _, _, s, _ in samples])
        if solved is not None and solved[3] >= 0:
            return solved
    solved = _least_squares([(1.0, float(rows * width), float(rows)) for rows, width, _, _ in samples],
                            [s for _, _, s, _ in samples])
    return None if solved is None else (*solved, 0.0)


def _least_squares(xs: list[tuple[float, ...]], ys: list[float]) -> tuple[float, ...] | None:
    n = len(xs[0])
    matrix = [[sum(x[i] * x[j] for x in xs) + (RIDGE * len(xs) if i == j and i else 0.0) for j in range(n)]
              for i in range(n)]
    return _solve(matrix, [sum(x[i] * y for x, y in zip(xs, ys)) for i in range(n)])


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


def best_width(draft_sizes: Sequence[int], yields: Sequence[float], cost: PassCostModel) -> int:
    """The common pass width of a padded batch (best_widths without skipped padding)."""
    return max(best_widths(draft_sizes, yields, cost), default=1)


def best_widths(draft_sizes: Sequence[int], yields: Sequence[float], cost: PassCostModel,
                skips_padding: bool = False) -> list[int]:
    """Each row's pass width (root + draft tokens) so the pass commits the most tokens per second.

    Rule: rows cut to widths w_i commit sum_i 1 + y_i * (w_i - 1) tokens in expectation, where
    y_i is row i's measured yield (draft tokens accepted per draft token verified), and cost
    c(B, w) for the w the pass computes: the widest, every row padded to it, or where the
    engine skips padding (kvcache.packed.only_tokens) the rows' mean width, plus what its
    padded slots still cost (PassCostModel.padding_cost). Candidates: a common
    cap w, each row cut to min(1 + k_i, w) (k_i: its draft size); where padding is skipped, also
    rows whose yield is below a threshold cut to their root alone, so a seldom-right draft
    costs no other row. While c is unknown, verify everything (and so measure it)."""
    rows = len(draft_sizes)
    full = [1 + k for k in draft_sizes]
    caps = sorted({1, max(full, default=1)} | set(full))
    thresholds = sorted(set(yields)) if skips_padding else [float("-inf")]
    best, best_rate = full, -1.0
    for cap in caps:
        for threshold in thresholds:
            widths = [min(n, cap) if y >= threshold else 1 for n, y in zip(full, yields)]
            widest = max(widths, default=1)
            computed = sum(widths) / rows if skips_padding and rows else widest
            seconds = cost.estimate(rows, computed, rows * widest - sum(widths) if skips_padding else 0.0)
            if seconds is None:
                return full
            committed = sum(1 + y * (w - 1) for w, y in zip(widths, yields))
            if committed / seconds > best_rate:
                best, best_rate = widths, committed / seconds
    return best


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
