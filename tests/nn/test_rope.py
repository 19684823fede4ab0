"""RoPE and the llama3 frequency scaling against transformers' Llama implementation."""

import math

import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from papernotes.errors import ConfigError
from papernotes.nn.rope import RotaryEmbedding, apply_rotary, rope_cos_sin, rope_inverse_frequencies

HEAD_DIM = 16
THETA = 500000.0
SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def hf_rotary(scaling):
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        rope_theta=THETA,
        rope_scaling=scaling,
        max_position_embeddings=128,
    )
    return LlamaRotaryEmbedding(config)


def test_llama3_scaling_exercises_all_three_branches_at_the_tiny_size():
    plain = rope_inverse_frequencies(HEAD_DIM, THETA)
    scaled = rope_inverse_frequencies(HEAD_DIM, THETA, SCALING)
    wavelength = 2 * math.pi / plain
    length = SCALING["original_max_position_embeddings"]
    kept = wavelength < length / SCALING["high_freq_factor"]
    divided = wavelength > length / SCALING["low_freq_factor"]
    blended = ~kept & ~divided
    assert kept.any() and divided.any() and blended.any()
    torch.testing.assert_close(scaled[kept], plain[kept])
    torch.testing.assert_close(scaled[divided], plain[divided] / SCALING["factor"])
    assert ((scaled[blended] < plain[blended]) & (scaled[blended] > plain[blended] / SCALING["factor"])).all()


@pytest.mark.parametrize("scaling", [None, SCALING], ids=["default", "llama3"])
def test_inverse_frequencies_match_hf(scaling):
    theirs = hf_rotary(scaling).inv_freq
    torch.testing.assert_close(rope_inverse_frequencies(HEAD_DIM, THETA, scaling), theirs, atol=0, rtol=0)


@pytest.mark.parametrize("scaling", [None, SCALING], ids=["default", "llama3"])
def test_cos_sin_and_rotation_match_hf(scaling):
    torch.manual_seed(0)
    position_ids = torch.tensor([[0, 1, 2, 90, 127], [5, 5, 6, 7, 100]])
    q, k = torch.randn(2, 4, 5, HEAD_DIM), torch.randn(2, 2, 5, HEAD_DIM)
    hf_cos, hf_sin = hf_rotary(scaling)(q, position_ids)
    cos, sin = RotaryEmbedding(HEAD_DIM, THETA, scaling)(position_ids, q.dtype)
    torch.testing.assert_close(cos, hf_cos)
    torch.testing.assert_close(sin, hf_sin)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), hf_q)
    torch.testing.assert_close(apply_rotary(k, cos, sin), hf_k)


def test_rotated_dot_product_depends_only_on_relative_offset():
    torch.manual_seed(0)
    inv_freq = rope_inverse_frequencies(HEAD_DIM, 10000.0)
    q, k = torch.randn(HEAD_DIM), torch.randn(HEAD_DIM)

    def score(m, n):
        cos, sin = rope_cos_sin(inv_freq, torch.tensor([m, n]), torch.float64)
        rotated_q = apply_rotary(q.double().expand(1, 1, 2, -1), cos, sin)[0, 0, 0]
        rotated_k = apply_rotary(k.double().expand(1, 1, 2, -1), cos, sin)[0, 0, 1]
        return float(rotated_q @ rotated_k)

    assert score(10, 3) == pytest.approx(score(57, 50), abs=1e-5)  # fp32 angles
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)


def test_frequencies_stay_fp32_when_the_module_is_cast_to_bf16():
    rotary = RotaryEmbedding(HEAD_DIM, THETA, SCALING).to(torch.bfloat16)
    assert rotary.inv_freq.dtype == torch.float32
    torch.testing.assert_close(
        rotary.inv_freq, rope_inverse_frequencies(HEAD_DIM, THETA, SCALING), atol=0, rtol=0
    )
    assert "inv_freq" not in rotary.state_dict()


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "yarn", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0},
        {**SCALING, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
    ],
    ids=["unsupported-type", "missing-keys", "low-above-high"],
)
def test_bad_rope_scaling_raises_config_error(scaling):
    with pytest.raises(ConfigError, match="rope_scaling"):
        rope_inverse_frequencies(HEAD_DIM, THETA, scaling)
