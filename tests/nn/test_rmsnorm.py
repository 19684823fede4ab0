"""RMSNorm against transformers' LlamaRMSNorm, plus its defining invariant."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from papernotes.nn.rmsnorm import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_hf_llama_rmsnorm(dtype):
    torch.manual_seed(0)
    ours, theirs = RMSNorm(48, eps=1e-5), LlamaRMSNorm(48, eps=1e-5)
    weight = torch.randn(48)
    ours.weight.data.copy_(weight)
    theirs.weight.data.copy_(weight)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = (torch.randn(3, 5, 48) * 7).to(dtype)
    out = ours(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, theirs(x), atol=0, rtol=0)  # same op order: bit-identical


def test_rmsnorm_output_has_unit_rms_before_the_gain_and_ignores_input_scale():
    torch.manual_seed(0)
    norm = RMSNorm(32, eps=1e-12)
    x = torch.randn(4, 32)
    out = norm(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(4))
    torch.testing.assert_close(norm(x * 1000.0), out)
