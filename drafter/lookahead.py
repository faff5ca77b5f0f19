"""Layout of one lookahead draft pass: uncached prefix, 2-D Jacobi window, pool phrases."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch



@dataclass(frozen=True)
class PassLayout:
    tokens: list[int]
    positions: list[int]
    visible: torch.Tensor  # (Q, Q) bool: row q may attend to new token k
    current_index: int  # index of the current last token c (end of the prefix)
    last_row_indices: list[int]  # window's deepest level; its argmax becomes the next level
    phrase_indices: list[list[int]]  # per candidate phrase, the indices of its tokens
    judged_indices: list[int] = field(default_factory=list)  # fed tokens whose next token is judged

    @property
    def logit_indices(self) -> list[int]:
        """Only these rows need logits: c, the window's last level, every phrase token, and the
        fed tokens whose successor's agreement is measured (DraftSession.agreed)."""
        rows = [self.current_index, *self.last_row_indices]
        for slots in self.phrase_indices:
            rows.extend(slots)
        rows.extend(self.judged_indices)
        return rows


def build_pass_layout(
    prefix: Sequence[int], past_len: int, window: Sequence[Sequence[int]], phrases: Sequence[Sequence[int]]
) -> PassLayout:
    """Lay out one draft forward pass after `past_len` cached tokens.

    Visibility (everything also sees the whole KV cache):
    - prefix (uncached committed/draft tokens ending with the current token c at position p):
      causal among themselves;
    - window token (level l, column i) at position p+1+i+l sees the prefix, level 0 columns
      0..i, and column i of levels 1..l (a Jacobi trajectory per column);
    - phrase token k at position p+1+k sees the prefix and its own phrase tokens 0..k, i.e.
      exactly what it would see if the phrase were accepted, so its KV entry stays valid.
    """
    tokens = [int(t) for t in prefix]
    positions = list(range(past_len, past_len + len(tokens)))
    p = positions[-1]
    n_prefix = len(tokens)
    parents: list[list[int]] = [list(range(i)) for i in range(n_prefix)]  # visible new rows, excl. self
    base_visible = list(range(n_prefix))

    level_index: list[list[int]] = []
    for level, row in enumerate(window):
        indices = []
        for col, token in enumerate(row):
            vis = base_visible + level_index[0][: col + 1] if level else base_visible + indices[:col]
            if level:
                vis = vis + [level_index[lv][col] for lv in range(1, level)]
            indices.append(len(tokens))
            tokens.append(int(token))
            positions.append(p + 1 + col + level)
            parents.append(vis)
        level_index.append(indices)

    phrase_indices: list[list[int]] = []
    for phrase in phrases:
        slots: list[int] = []
        for k, token in enumerate(phrase):
            parents.append(base_visible + slots[:k])
            slots.append(len(tokens))
            tokens.append(int(token))
            positions.append(p + 1 + k)
        phrase_indices.append(slots)

    q = len(tokens)
    visible = torch.zeros(q, q, dtype=torch.bool)
    for row, cols in enumerate(parents):
        visible[row, row] = True
        if cols:
            visible[row, cols] = True
    return PassLayout(tokens, positions, visible, n_prefix - 1, level_index[-1] if level_index else [], phrase_indices)


def longest_phrase_match(
    next_token: int, phrase: Sequence[int], phrase_predictions: Sequence[int]
) -> int:
    """Number of leading phrase tokens the draft model itself would have produced greedily.

    Rule: token k is accepted iff it equals the draft's argmax after the accepted tokens
    before it (next_token for k=0, the prediction at phrase token k-1 otherwise).
    """
    expected = next_token
    for k, token in enumerate(phrase):
        if token != expected:
            return k
        expected = phrase_predictions[k]
    return len(phrase)
