"""Prepacked weights for a model's linear layers on the CPU (oneDNN), chosen at load time.

A k-token pass through HF's plain `nn.Linear` costs far more than a 1-token pass on a CPU,
although the weights are read once either way: the GEMM kernels for small M are poor. oneDNN's
prepacked layout (weights reordered once into the blocked form its kernels want) makes a
16-token pass cost about 1.5x a 1-token one. The model's own modules stay: each `nn.Linear` is
swapped for a `PackedLinear` with the same name, shapes and results (float rounding aside), so
any architecture keeps working. Inference only: packed layers have no gradient."""
from __future__ import annotations

import torch


def can_pack(model: torch.nn.Module) -> bool:
    """oneDNN packing pays on the CPU, for float32 and bfloat16 weights."""
    parameter = next(model.parameters())
    return (parameter.device.type == "cpu" and parameter.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


PLAIN_MAX_ROWS = 2  # up to this many input rows the plain layout is faster (a GEMV reads weights once)


class PackedLinear(torch.nn.Module):
    """y = x W^T + b, from W in oneDNN's blocked layout when x has more than PLAIN_MAX_ROWS rows,
    else from the plain W (measured on one AVX-512 core, 90 576x1536 matrices: plain 23 / 25 /
    43 / 55 / 59 ms at 1 / 2 / 4 / 8 / 16 rows, packed 25 / 26 / 30 / 34 / 44 ms). Both layouts are
    kept: twice the linear weights' memory (--no-packed-weights saves it)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: a tied weight stays tied
        self.bias = linear.bias
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.register_buffer("packed_weight", packed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= PLAIN_MAX_ROWS * self.in_features:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


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
    return len(swaps)
