"""Lossless sampling: the target's processed distribution and draws keyed by (seed, position)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.validation import sampling_problem

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0

    def __post_init__(self) -> None:
        problem = sampling_problem(self.temperature, self.top_p, self.top_k)
        if problem is not None:
            raise ValueError(problem)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def keyed_uniform(seed: int, position: int) -> float:
    """A uniform in [0, 1) that depends only on (seed, absolute position): the same draw in
    every process and in the target-alone reference, whatever the round structure."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ position) >> 11) / float(1 << 53)


def processed_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Rows of logits -> the target's sampling distribution: temperature, then top-k, then
    top-p (the smallest most-likely set whose mass reaches p), renormalised. float64."""
    scores = logits.double() / params.temperature
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, uniforms: list[float]) -> list[int]:
    """Inverse-CDF draw per row: the token whose cumulative mass first exceeds u."""
    cdf = probs.cumsum(dim=-1)
    u = torch.tensor(uniforms, dtype=cdf.dtype, device=cdf.device).unsqueeze(-1) * cdf[..., -1:]
    picks = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return picks.clamp(max=probs.shape[-1] - 1).tolist()


def next_tokens(logits: torch.Tensor, positions: list[int], params: SamplingParams | None) -> list[int]:
    """The target's token at each row: argmax when greedy, else the keyed draw for the
    absolute position that row predicts.

    Tree acceptance under sampling uses these as its 'predictions': at each node it follows
    the child equal to the drawn token y and stops, emitting y, where none matches. Every
    emitted token is then exactly the draw the target alone would make at that position
    (same prefix, same distribution, same keyed uniform), so the output distribution is the
    target's and the output itself equals the keyed target-alone sampler's. The draft stays
    greedy: it only proposes; it never changes what is drawn."""
    if params is None or params.is_greedy:
        return logits.argmax(dim=-1).tolist()
    return draw(processed_probs(logits, params), [keyed_uniform(params.seed, p) for p in positions])
