"""bfloat16 RMSNorm through our kernel (kvcache.norms): the variant each HF class computes is found
by probing, its outputs are HF's bits, a row's bits do not depend on the rows beside it, and what
no variant reproduces (or a float32 model) keeps HF's module."""
import pytest
import torch
from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from kvcache import cpu_gemm
from kvcache.norms import KINDS, KernelRMSNorm, swap_norms
from tests.families import FAMILIES, family_pair

pytestmark = pytest.mark.skipif(cpu_gemm.bf16_unusable_reason() is not None,
                                reason=f"no bfloat16 kernels here: {cpu_gemm.bf16_unusable_reason()}")


class _Holder(torch.nn.Module):
    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))  # the model's dtype
        self.norm = norm


@pytest.mark.parametrize("cls,kind,dim", [(LlamaRMSNorm, "llama", 576), (Qwen3RMSNorm, "llama", 64),
                                          (Olmo2RMSNorm, "olmo", 100), (Gemma2RMSNorm, "gemma", 40)])
def test_each_hf_norm_gets_its_own_formula_and_hf_bits_in_any_batch(cls, kind, dim):
    torch.manual_seed(dim)
    norm = cls(dim).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim))
    holder = _Holder(norm)
    x = (torch.randn(3, 33, dim) * 4).to(torch.bfloat16)
    with torch.inference_mode():
        expected = norm(x)
        assert swap_norms(holder) == 1
        swapped = holder.norm
        assert isinstance(swapped, KernelRMSNorm) and KINDS[swapped.kind] == kind
        assert swapped.weight is norm.weight
        got = swapped(x)
        assert torch.equal(got, expected)
        one_by_one = torch.stack([torch.stack([swapped(x[b, i]) for i in range(33)]) for b in range(3)])
        assert torch.equal(got, one_by_one)
        assert torch.equal(swapped(x.transpose(0, 1)), expected.transpose(0, 1))  # strided input


class LayerNormNamedRMSNorm(torch.nn.Module):
    """Subtracts the mean: no kernel variant computes it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim, dtype=torch.bfloat16))
        self.eps = 1e-6

    def forward(self, x):
        return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], self.weight.float(), eps=self.eps).to(x.dtype)


def test_a_norm_no_variant_reproduces_keeps_its_own_forward():
    holder = _Holder(LayerNormNamedRMSNorm(64))
    assert swap_norms(holder) == 0
    assert isinstance(holder.norm, LayerNormNamedRMSNorm)


def test_float32_models_keep_hf_norms():
    holder = _Holder(LlamaRMSNorm(64)).float()
    assert swap_norms(holder) == 0 and isinstance(holder.norm, LlamaRMSNorm)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_pass_is_hf_norm_bits(family):
    """A whole model's logits with swapped norms are those with HF's, bit for bit."""
    target, _ = family_pair(family, 320)
    target = target.to(torch.bfloat16)
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 7]])
    with torch.inference_mode():
        expected = target(ids).logits
        norms = [m for m in target.modules() if type(m).__name__.endswith("RMSNorm")]
        swapped = swap_norms(target)
        assert swapped == len(norms)
        assert torch.equal(target(ids).logits, expected)
