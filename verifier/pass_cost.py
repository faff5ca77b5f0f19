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
    cannot mislead for long, and every pass informs the estimate of every size."""

    def __init__(self) -> None:
        self.samples: deque[tuple[int, float, float]] = deque(maxlen=COST_WINDOW)
        self.coefficients: tuple[float, float, float] | None = None

    def observe(self, num_rows: int, width: float, seconds: float) -> None:
        self.samples.append((num_rows, width, seconds))
        self.coefficients = _fit(self.samples)

    def estimate(self, num_rows: int, width: float) -> float | None:
        """c(B, w), never below a microsecond; None until passes of two sizes were timed. w is
        the width the pass computes: its widest row, or its mean where padding is skipped."""
        if self.coefficients is None:
            return None
        a, b, d = self.coefficients
        return max(a + b * num_rows * width + d * num_rows, 1e-6)

    def break_even_yield(self, num_rows: int) -> float | None:
        """The yield below which no draft token pays in a pass of num_rows rows. Rule: widening
        B rows by one token costs b*B and commits sum(y) more; a plain pass commits B tokens in
        c(B, 1); so it pays iff mean(y) > b*B / c(B, 1)."""
        plain = self.estimate(num_rows, 1)
        return None if plain is None else max(self.coefficients[1], 0.0) * num_rows / plain


def _fit(samples: Sequence[tuple[int, float, float]]) -> tuple[float, float, float] | None:
    """Least squares for seconds ~ a + b*(rows*width) + d*rows (normal equations, ridge on b, d)."""
    if len({rows * width for rows, width, _ in samples}) < 2:
        return None  # no spread in size: no slope to speak of
    xs = [(1.0, float(rows * width), float(rows)) for rows, width, _ in samples]
    matrix = [[sum(x[i] * x[j] for x in xs) + (RIDGE * len(xs) if i == j and i else 0.0) for j in range(3)]
              for i in range(3)]
    rhs = [sum(x[i] * s for x, (_, _, s) in zip(xs, samples)) for i in range(3)]
    return _solve3(matrix, rhs)


def _solve3(m: list[list[float]], v: list[float]) -> tuple[float, float, float] | None:
    """Gaussian elimination with partial pivoting on a 3x3 system."""
    rows = [m[i][:] + [v[i]] for i in range(3)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-15:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(3):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
    return tuple(rows[i][3] / rows[i][i] for i in range(3))


def best_width(draft_sizes: Sequence[int], yields: Sequence[float], cost: PassCostModel) -> int:
    """The common pass width of a padded batch (best_widths without skipped padding)."""
    return max(best_widths(draft_sizes, yields, cost), default=1)


def best_widths(draft_sizes: Sequence[int], yields: Sequence[float], cost: PassCostModel,
                skips_padding: bool = False) -> list[int]:
    """Each row's pass width (root + draft tokens) so the pass commits the most tokens per second.

    Rule: rows cut to widths w_i commit sum_i 1 + y_i * (w_i - 1) tokens in expectation, where
    y_i is row i's measured yield (draft tokens accepted per draft token verified), and cost
    c(B, w) for the w the pass computes: the widest, every row padded to it, or where the
    engine skips padding (kvcache.packed.only_tokens) the rows' mean width. Candidates: a common
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
            computed = sum(widths) / rows if skips_padding and rows else max(widths, default=1)
            seconds = cost.estimate(rows, computed)
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
