"""Prepacked weights for a model's linear layers on the CPU, chosen at load time.

A k-token pass through HF's plain `nn.Linear` costs far more than a 1-token pass on a CPU,
although the weights are read once either way: the GEMM kernels for small M are poor. Each
`nn.Linear` is swapped for a `PackedLinear` with the same name, shapes and results (float rounding
aside), so any architecture keeps working. Its packed copy is, where the machine allows, our own
kernel's panel layout (kvcache.cpu_gemm: AVX-512 or AVX2, streams each weight once), else
oneDNN's blocked layout. Inference only: packed layers have no gradient.

bfloat16 weights take our bfloat16 kernel (AVX-512 with AVX512-BF16, or AVX2), for every number
of rows: a row's result is then the same bits whatever else is in the pass (batch invariance), which
a verification pass needs to agree with one-token decoding. Elsewhere they take oneDNN, which does
not promise it (logged once).

Padding costs nothing here (only_tokens): a batched pass pads every row to the widest, and
inside it the packed layers compute the real tokens only; a padding token's outputs are zeros,
which keep it finite through every later layer, and no real token ever attends to it."""
from __future__ import annotations

import contextlib
import logging
import threading
from functools import lru_cache

import torch

from kvcache import cpu_gemm

log = logging.getLogger(__name__)


def can_pack(model: torch.nn.Module) -> bool:
    """Packing pays on the CPU, for float32 and bfloat16 weights."""
    parameter = next(model.parameters())
    return (parameter.device.type == "cpu" and parameter.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


PLAIN_MAX_ROWS = 2  # oneDNN: up to this many input rows the plain layout is faster (a GEMV reads weights once)
KERNEL_MAX_ROWS = 64  # ours: past this many rows (a prefill) plain MKL is as fast (measured, 1 and 2 threads)


_pass = threading.local()  # this thread's padded pass: (real tokens, B, W) (only_tokens)


@contextlib.contextmanager
def only_tokens(real: torch.Tensor | None, rows: int = 0, width: int = 0):
    """Within, on this thread: packed layers fed this pass's (rows, width, features)
    activations compute only the flat positions `real` (row * width + column); the others'
    outputs are zeros. None: every token, as outside. Any other input shape is computed whole.
    Per thread, so another engine's pass in another thread of the process is never cut."""
    previous = getattr(_pass, "real_tokens", None)
    _pass.real_tokens = None if real is None else (real, rows, width)
    try:
        yield
    finally:
        _pass.real_tokens = previous


def has_packed_layers(model: torch.nn.Module) -> bool:
    return getattr(model, "num_packed_linears", 0) > 0


class PackedLinear(torch.nn.Module):
    """y = x W^T + b. Both layouts are kept, twice the linear weights' memory (--no-packed-weights
    saves it):
    - `kernel` (float32 and bfloat16 on AVX-512 or AVX2): ours; float32 for up to KERNEL_MAX_ROWS
      input rows, else the plain W;
    - `plain`: the plain W alone, where oneDNN cannot pack this dtype on this CPU;
    - `onednn`: oneDNN's blocked W for more than PLAIN_MAX_ROWS rows, else the plain W (measured
      on one AVX-512 core, 90 576x1536 matrices: plain 23 / 25 / 43 / 55 / 59 ms at 1 / 2 / 4 / 8
      / 16 rows, packed 25 / 26 / 30 / 34 / 44 ms)."""

    def __init__(self, linear: torch.nn.Linear, use_kernel: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: a tied weight stays tied
        self.bias = linear.bias
        library = cpu_gemm.kernel() if use_kernel and _kernel_takes(linear.weight.dtype) else None
        self.backend = "kernel" if library is not None else "onednn"
        self.invariant = library is not None and linear.weight.dtype == torch.bfloat16
        if library is not None:
            packed = cpu_gemm.pack(library, linear.weight)
        else:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
            except RuntimeError as error:  # e.g. bfloat16 on a CPU without AVX-512 or AVX-NE-CONVERT
                _say_once(f"{linear.weight.dtype} linear layers stay plain: oneDNN cannot pack them here ({error})")
                self.backend, packed = "plain", torch.empty(0)
        self.register_buffer("packed_weight", packed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = getattr(_pass, "real_tokens", None)
        if cut is not None and x.dim() == 3 and tuple(x.shape[:2]) == cut[1:]:
            real = cut[0]
            flat = x.reshape(-1, self.in_features)
            out = flat.new_zeros(flat.shape[0], self.out_features)
            out.index_copy_(0, real, self._linear(flat.index_select(0, real)))
            return out.view(*x.shape[:-1], self.out_features)
        return self._linear(x)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.detach()
        if self.backend == "kernel":
            if self.invariant and x.dtype == torch.bfloat16:
                return cpu_gemm.linear(cpu_gemm.kernel(), x, self.packed_weight, self.out_features, bias)
            if x.numel() <= KERNEL_MAX_ROWS * self.in_features and x.dtype == torch.float32:
                return cpu_gemm.linear(cpu_gemm.kernel(), x, self.packed_weight, self.out_features, bias)
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if self.backend == "plain" or x.numel() <= PLAIN_MAX_ROWS * self.in_features:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed={self.backend}"


def _kernel_takes(dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        reason = cpu_gemm.bf16_unusable_reason()
        if reason is not None:
            _say_once(f"bfloat16 linear layers use oneDNN ({reason}): a wide verification pass may round differently "
                      "from a one-token pass, so greedy text can differ from decoding without drafts at near-ties")
        return reason is None
    if dtype == torch.float16:
        _say_once("float16 linear layers use oneDNN (our kernels take float32 and bfloat16): a wide verification pass "
                  "may round differently from a one-token pass, so greedy text can differ from decoding without drafts "
                  "at near-ties; --dtype bfloat16 is exact")
    return False


@lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    log.warning(message)


@torch.inference_mode()
def pack_linears(model: torch.nn.Module) -> int:
    """Swap every nn.Linear of `model` for a PackedLinear, in place, where packing pays (see
    can_pack). Returns how many layers were packed."""
    if not can_pack(model):
        return 0
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is torch.nn.Linear]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    model.num_packed_linears = getattr(model, "num_packed_linears", 0) + len(swaps)
    return len(swaps)
