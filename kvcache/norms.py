"""bfloat16 RMSNorm layers in one kernel call on the CPU (kvcache/cpu_norm.cpp), chosen at load time.

HF's RMSNorm is seven or eight small tensor ops (casts, pow, mean, rsqrt, two multiplies), each a
few microseconds of dispatch: the built-in target's 61 norms cost 1.3-2 ms of a 15 ms bfloat16
one-token pass on a CPU. Our kernel computes each row in one fixed order, so a row's result is
the same whatever other rows are in the pass (the batch invariance bfloat16 verification needs),
and rounds where HF rounds: it gives HF's bits (tests/kvcache/test_norms.py). Float32 models keep
HF's norm, whose sums our order would change in the last bit, and float32's promise is the
target's own output.

Which of HF's formulas a module computes is not taken from its name: for every module whose class
name ends in RMSNorm (a 1-D weight and an epsilon), a copy with a random weight is fed random
rows, and the module is swapped only for the kernel variant that reproduces it. Any other norm
keeps HF's."""
from __future__ import annotations

import copy
import ctypes
import logging

import torch

from kvcache import cpu_gemm

log = logging.getLogger(__name__)

KINDS = ("llama", "olmo", "gemma")  # where the weight is applied (kvcache/cpu_norm.cpp)
PROBE_ROWS = 4


class KernelRMSNorm(torch.nn.Module):
    """y = RMSNorm(x) as the swapped module computes it, through our kernel (CPU, bfloat16)."""

    def __init__(self, norm: torch.nn.Module, eps: float, kind: int) -> None:
        super().__init__()
        self.weight = norm.weight  # the same Parameter
        self.eps, self.kind, self.dim = float(eps), kind, norm.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or self.weight.dtype != torch.bfloat16 or x.device.type != "cpu" \
                or x.shape[-1] != self.dim:
            raise ValueError(f"KernelRMSNorm of {self.weight.dtype} and {self.dim} features fed {x.dtype} "
                             f"{tuple(x.shape)} on {x.device}")
        x = x.contiguous()
        out = torch.empty_like(x)
        cpu_gemm.kernel().ouro_rms_norm_bf16(x.data_ptr(), x.numel() // self.dim, self.dim, self.weight.data_ptr(),
                                             ctypes.c_float(self.eps), self.kind, out.data_ptr())
        return out

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, kind={KINDS[self.kind]}"


def _eps(module: torch.nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


@torch.inference_mode()
def _matching_kind(module: torch.nn.Module, eps: float) -> int | None:
    """The kernel variant that reproduces `module` on random rows, or None. The probe is a copy of
    the module with a random weight, so the variants' ways of applying it differ."""
    probe = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(0)
    weight = probe.weight
    weight.copy_(torch.randn(weight.shape, generator=generator).to(weight.dtype))
    x = (torch.randn(PROBE_ROWS, weight.shape[0], generator=generator) * 3).to(weight.dtype)
    expected = probe(x)
    module = probe
    if expected.shape != x.shape or expected.dtype != x.dtype:
        return None
    best, best_equal = None, -1
    for kind in range(len(KINDS)):
        got = KernelRMSNorm(module, eps, kind)(x)
        close = torch.allclose(got.float(), expected.float(), rtol=2 ** -7, atol=2 ** -7)  # a bfloat16 step
        equal = int((got == expected).sum())
        if close and equal > best_equal:
            best, best_equal = kind, equal
    if best is not None and best_equal < 0.9 * x.numel():
        return None  # close but not the same roundings: keep HF's
    return best


@torch.inference_mode()
def swap_norms(model: torch.nn.Module) -> int:
    """Swap each RMSNorm of a CPU bfloat16 model for a KernelRMSNorm where one reproduces it
    (module docstring), in place; returns how many were swapped."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.bfloat16 or cpu_gemm.bf16_unusable_reason():
        return 0  # kvcache.packed says once why bfloat16 takes no kernel
    swaps, kinds, refused = [], {}, set()
    for parent in model.modules():
        for name, child in parent.named_children():
            weight, eps = getattr(child, "weight", None), _eps(child)
            if (not type(child).__name__.endswith("RMSNorm") or not isinstance(weight, torch.nn.Parameter)
                    or weight.dim() != 1 or weight.dtype != parameter.dtype or eps is None):
                continue
            key = (type(child), eps)
            if key not in kinds:
                kinds[key] = _matching_kind(child, eps)
            if kinds[key] is None:
                refused.add(type(child).__name__)
                continue
            swaps.append((parent, name, KernelRMSNorm(child, eps, kinds[key])))
    for parent, name, norm in swaps:
        setattr(parent, name, norm)
    if refused:
        log.info("%s kept as HF computes it: no kernel variant reproduces it", ", ".join(sorted(refused)))
    return len(swaps)
