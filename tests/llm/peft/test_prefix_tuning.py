"""Prefix-Tuning: the reparameterisation, RoPE positions, masks, generate, and parity with peft."""

import dataclasses
import json

import peft
import pytest
import torch
import transformers

from papernotes.core.config import preset
from papernotes.errors import CheckpointError, ConfigError, ShapeMismatchError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.model import llama
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import prefix_tuning
from papernotes.llm.peft.prefix_tuning import PrefixTuningConfig
from papernotes.nn.rope import apply_rotary

INPUT_IDS = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))


def build(seed: int = 0, **changes) -> Llama:
    torch.manual_seed(seed)
    return Llama(dataclasses.replace(preset(PRESETS, "tiny"), **changes)).eval()


def test_prefix_shapes_follow_gqa_and_only_the_prefix_trains():
    model = build()  # tiny: 4 query heads share 2 key/value heads
    encoder = prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=5, encoder_hidden_size=16)
    )
    kv = encoder()
    assert len(kv) == 2 and all(k.shape == v.shape == (1, 2, 5, 16) for k, v in kv)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"prefix_encoder.{n}" for n, _ in encoder.named_parameters()}
    model(INPUT_IDS).sum().backward()
    assert encoder.embedding.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_attached_prefix_equals_passing_prefix_kv_explicitly():
    model = build()
    encoder = prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=8)
    )
    attached = model(INPUT_IDS)
    prefix_tuning.remove_prefix_tuning(model)
    explicit = model(INPUT_IDS, prefix_kv=encoder())
    torch.testing.assert_close(attached, explicit, atol=0, rtol=0)
    assert not torch.allclose(model(INPUT_IDS), attached)  # the prefix does change the output


@torch.no_grad()
def test_collapsed_prefix_equals_the_mlp_prefix(tmp_path):
    model = build()
    prefix_tuning.apply_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=4, encoder_hidden_size=32))
    through_mlp = model(INPUT_IDS)
    prefix_tuning.collapse_prefix(model)
    assert model.prefix_encoder.transform is None
    assert model.prefix_encoder.embedding.weight.shape == (4, 2 * 2 * 2 * 16)  # L × layers·2·Hkv·D
    torch.testing.assert_close(model(INPUT_IDS), through_mlp, atol=1e-6, rtol=0)


@torch.no_grad()
def test_text_positions_start_after_the_prefix():
    """The prefix takes positions 0..L-1, so the text is rotated from L on (HF + peft's convention)."""
    model = build()
    L = 4
    prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=L, prefix_projection=False)
    )
    default = model(INPUT_IDS)
    T = INPUT_IDS.shape[1]
    torch.testing.assert_close(model(INPUT_IDS, position_ids=torch.arange(L, L + T)), default, atol=0, rtol=0)
    assert not torch.allclose(model(INPUT_IDS, position_ids=torch.arange(T)), default, atol=1e-4)


@torch.no_grad()
def test_attention_reads_the_stored_prefix_keys_unrotated(monkeypatch):
    """In every layer, at the prefill and at each cached decoding step (the query positions move on), the
    keys attention reads at 0..L-1 are the stored prefix keys exactly, while the new text keys behind them
    are W_k x rotated by their positions."""
    model = build()
    L = 5
    encoder = prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=L, prefix_projection=False)
    )
    stored = encoder()  # per layer (k, v), each (1, Hkv, L, D)
    inputs, attended = [], []  # per attention call: (layer, x, cos, sin) and the (k, v) given to attend()

    def record_input(module, args):
        inputs.append((module, *args[:3]))

    real_attend = llama.attend

    def spy_attend(q, k, v, **kwargs):
        attended.append((k, v))
        return real_attend(q, k, v, **kwargs)

    monkeypatch.setattr(llama, "attend", spy_attend)
    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(record_input)
    generate(model, INPUT_IDS[:1], GenerationConfig(max_new_tokens=4))  # prefill, then cached steps
    layers = model.config.num_hidden_layers
    assert len(attended) == len(inputs) == 4 * layers  # the prefill and three one-token steps
    prompt = INPUT_IDS.shape[1]
    for call, ((attn, x, cos, sin), (k, v)) in enumerate(zip(inputs, attended)):
        prefix_k, prefix_v = stored[attn.layer_idx]
        assert torch.equal(k[:, :, :L], prefix_k) and torch.equal(v[:, :, :L], prefix_v)
        B, T, _ = x.shape
        step = call // layers
        start = L if step == 0 else L + prompt + step - 1  # the text's positions follow the prefix
        assert (T, k.shape[2]) == ((prompt, L + prompt) if step == 0 else (1, start + 1))
        expected_cos, _ = model.model.rotary_emb(torch.arange(start, start + T)[None], cos.dtype)
        torch.testing.assert_close(cos, expected_cos, atol=0, rtol=0)
        new_k = attn.k_proj(x).view(B, T, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        torch.testing.assert_close(k[:, :, -T:], apply_rotary(new_k, cos, sin), atol=1e-6, rtol=0)
    # power: had the prefix been rotated as tokens at 0..L-1, the keys would differ (position 0 alone is
    # the identity)
    cos, sin = model.model.rotary_emb(torch.arange(L)[None], torch.float32)
    assert not torch.allclose(apply_rotary(stored[0][0], cos, sin), stored[0][0], atol=1e-3)


@torch.no_grad()
def test_prefix_with_padding_mask_matches_unpadded_rows():
    model = build()
    prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=False)
    )
    short = INPUT_IDS[:1, :6]
    padded = torch.cat((short, torch.zeros(1, 3, dtype=torch.long)), dim=1)  # right padding
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, :6], model(short), atol=1e-5, rtol=0)


@torch.no_grad()
def test_generate_with_a_prefix_equals_full_forward_greedy():
    model = build()
    prefix_tuning.apply_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=5, encoder_hidden_size=16))
    prompt = INPUT_IDS[:1]
    ids, _ = generate(model, prompt, GenerationConfig(max_new_tokens=8))
    seq = prompt
    for _ in range(8):  # no cache: recompute everything, so cache + prefix bookkeeping is checked
        seq = torch.cat((seq, model(seq)[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(ids, seq[:, prompt.shape[1] :])


@torch.no_grad()
def test_prefix_matches_peft_prefix_tuning_on_our_hf_export(tmp_path):
    model = build()
    model.save_pretrained(tmp_path / "base")
    prefix_tuning.apply_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=6, encoder_hidden_size=16))
    ours = model(INPUT_IDS)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, prefix_projection=False)
    peft_model = peft.get_peft_model(hf, config).eval()
    peft_model.prompt_encoder["default"].embedding.weight.copy_(model.prefix_encoder.table())
    torch.testing.assert_close(peft_model(INPUT_IDS).logits, ours, atol=1e-4, rtol=0)


@torch.no_grad()
def test_saved_prefix_loads_in_peft_and_back_with_equal_logits(tmp_path):
    model = build()
    model.save_pretrained(tmp_path / "base")
    prefix_tuning.apply_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=5, encoder_hidden_size=16))
    ours = model(INPUT_IDS)
    prefix_tuning.save_prefix(model, tmp_path / "prefix", base_model_name_or_path=str(tmp_path / "base"))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "prefix").eval()
    torch.testing.assert_close(peft_model(INPUT_IDS).logits, ours, atol=1e-4, rtol=0)
    peft_model.save_pretrained(tmp_path / "from_peft")  # peft's own writer, read back by us
    fresh = build()
    prefix_tuning.load_prefix(fresh, tmp_path / "from_peft")
    torch.testing.assert_close(fresh(INPUT_IDS), ours, atol=1e-5, rtol=0)


# ---- bad input -----------------------------------------------------------------------------------


def test_prefix_longer_than_the_context_is_refused():
    with pytest.raises(ConfigError, match="leaves no room for text"):
        prefix_tuning.apply_prefix_tuning(build(), PrefixTuningConfig(num_virtual_tokens=128))


def test_prefix_plus_prompt_past_the_context_is_a_clear_error():
    from papernotes.errors import DataError

    model = build()
    prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=100, prefix_projection=False)
    )
    with pytest.raises(DataError, match="prefix of 100"):
        model(torch.zeros(1, 40, dtype=torch.long))


def test_zero_length_prefix_is_refused():
    with pytest.raises(ConfigError, match="num_virtual_tokens must be >= 1"):
        PrefixTuningConfig(num_virtual_tokens=0)


def test_prefix_for_a_different_base_is_refused(tmp_path):
    other = build(num_hidden_layers=3)
    prefix_tuning.apply_prefix_tuning(
        other, PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=False)
    )
    prefix_tuning.save_prefix(other, tmp_path / "prefix")
    with pytest.raises(CheckpointError, match="num_layers=3 but this model needs 2"):
        prefix_tuning.load_prefix(build(), tmp_path / "prefix")


def test_prefix_weights_disagreeing_with_the_config_name_both_shapes(tmp_path):
    model = build()
    prefix_tuning.apply_prefix_tuning(
        model, PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=False)
    )
    prefix_tuning.save_prefix(model, tmp_path / "prefix")
    path = tmp_path / "prefix" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_virtual_tokens": 7}))
    with pytest.raises(ShapeMismatchError, match=r"prompt_embeddings has shape \(4, 128\).*\(7, 128\)"):
        prefix_tuning.load_prefix(build(), tmp_path / "prefix")


def test_a_lora_directory_is_not_a_prefix(tmp_path):
    from papernotes.llm.peft import lora

    model = build()
    lora.apply_lora(model, lora.LoraConfig(r=2))
    lora.save_adapter(model, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="expected 'PREFIX_TUNING'"):
        prefix_tuning.load_prefix(build(), tmp_path / "adapter")
