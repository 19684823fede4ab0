"""LoRA: the layer's math, its invariants, and adapter interop with peft in both directions."""

import dataclasses
import json

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from papernotes.core.config import preset
from papernotes.errors import CheckpointError, ConfigError, ShapeMismatchError
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora
from papernotes.llm.peft.lora import LoraConfig

INPUT_IDS = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))


def build(seed: int = 0, **changes) -> Llama:
    torch.manual_seed(seed)
    return Llama(dataclasses.replace(preset(PRESETS, "tiny"), **changes)).eval()


def randomise_lora(model: Llama, seed: int = 3) -> None:
    """Give B non-zero values, so ΔW ≠ 0 and every check below can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.1)


@torch.no_grad()
def test_lora_layer_computes_wx_plus_scaled_bax():
    model = build()
    lora.apply_lora(model, LoraConfig(r=4, lora_alpha=8))
    randomise_lora(model)
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 64)
    A, B, W = layer.lora_A.weight, layer.lora_B.weight, layer.weight
    torch.testing.assert_close(layer(x), x @ W.T + (8 / 4) * x @ A.T @ B.T)


@torch.no_grad()
def test_lora_at_init_leaves_the_output_unchanged():
    model = build()
    before = model(INPUT_IDS)
    lora.apply_lora(model, LoraConfig(target_modules="all-linear"))
    torch.testing.assert_close(model(INPUT_IDS), before, atol=0, rtol=0)


def test_only_lora_parameters_require_grad():
    model = build()
    targets = lora.apply_lora(model, LoraConfig(r=2))
    assert targets == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(targets)
    # gradients reach A through B·A once B is non-zero, and never the frozen weight
    randomise_lora(model)
    model(INPUT_IDS).sum().backward()
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.grad is None and layer.lora_A.weight.grad.abs().sum() > 0


def test_all_linear_adapts_every_projection_but_not_lm_head():
    model = build()
    targets = lora.apply_lora(model, LoraConfig(target_modules="all-linear"))
    assert len(targets) == 2 * 7 and "lm_head" not in targets


def test_regex_target_selects_by_full_name():
    model = build()
    targets = lora.apply_lora(model, LoraConfig(target_modules=r".*layers\.1\.mlp\.(up|down)_proj"))
    assert targets == ["model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]


@torch.no_grad()
def test_merged_lora_matches_unmerged_forward_and_round_trips():
    model = build()
    lora.apply_lora(model, LoraConfig(r=4, target_modules="all-linear"))
    randomise_lora(model)
    weight = model.model.layers[1].mlp.down_proj.weight.clone()
    unmerged = model(INPUT_IDS)
    lora.merge_lora(model)
    assert not torch.equal(model.model.layers[1].mlp.down_proj.weight, weight)
    torch.testing.assert_close(model(INPUT_IDS), unmerged, atol=1e-5, rtol=0)
    lora.unmerge_lora(model)
    torch.testing.assert_close(model.model.layers[1].mlp.down_proj.weight, weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(INPUT_IDS), unmerged, atol=1e-6, rtol=0)


@torch.no_grad()
def test_merge_and_unload_gives_the_plain_architecture(tmp_path):
    model = build()
    q_proj = model.model.layers[0].self_attn.q_proj
    lora.apply_lora(model, LoraConfig(r=4))
    randomise_lora(model)
    expected = model(INPUT_IDS)
    with pytest.raises(CheckpointError, match="merge_and_unload"):
        model.save_pretrained(tmp_path / "refused")  # would write lora_A keys into an HF directory
    lora.merge_and_unload(model)
    assert not lora.lora_layers(model)
    # the wrapped layer itself comes back (its class, and so any kernel plan it carries), merged in place
    assert model.model.layers[0].self_attn.q_proj is q_proj and type(q_proj) is not lora.LoraLinear
    torch.testing.assert_close(model(INPUT_IDS), expected, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "merged")
    torch.testing.assert_close(
        Llama.from_pretrained(tmp_path / "merged")(INPUT_IDS), expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_save_and_load_adapter_round_trip(tmp_path, init):
    model = build()
    lora.apply_lora(model, LoraConfig(r=4, lora_alpha=8, init=init))
    randomise_lora(model)
    lora.save_adapter(model, tmp_path / "adapter")
    stored = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in stored  # peft's key names
    fresh = build()
    lora.load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(INPUT_IDS), model(INPUT_IDS), atol=0, rtol=0)
    assert lora.read_adapter_config(tmp_path / "adapter").init == init


@torch.no_grad()
def test_our_adapter_loads_in_peft_with_equal_logits(tmp_path):
    model = build()
    model.save_pretrained(tmp_path / "base")
    lora.apply_lora(model, LoraConfig(r=4, lora_alpha=16, target_modules=("q_proj", "k_proj", "down_proj")))
    randomise_lora(model)
    lora.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    torch.testing.assert_close(peft_model(INPUT_IDS).logits, model(INPUT_IDS), atol=1e-4, rtol=0)


@torch.no_grad()
def test_peft_adapter_loads_in_ours_with_equal_logits(tmp_path):
    model = build()
    model.save_pretrained(tmp_path / "base")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    config = peft.LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights="gaussian")
    peft_model = peft.get_peft_model(hf, config)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    targets = lora.load_adapter(model, tmp_path / "adapter")
    assert len(targets) == 14
    torch.testing.assert_close(model(INPUT_IDS), peft_model.eval()(INPUT_IDS).logits, atol=1e-4, rtol=0)


@torch.no_grad()
def test_lora_model_generates_like_the_merged_model():
    from papernotes.llm.generation.generate import GenerationConfig, generate

    model = build()
    lora.apply_lora(model, LoraConfig(r=4))
    randomise_lora(model)
    prompt = INPUT_IDS[:1]
    config = GenerationConfig(max_new_tokens=12)
    unmerged, _ = generate(model, prompt, config)
    lora.merge_and_unload(model)
    merged, _ = generate(model, prompt, config)
    assert torch.equal(unmerged, merged)


# ---- bad input -----------------------------------------------------------------------------------


def test_target_modules_matching_nothing_lists_the_linear_names():
    with pytest.raises(ConfigError, match=r"matched no nn.Linear.*down_proj.*q_proj"):
        lora.apply_lora(build(), LoraConfig(target_modules=("qkv",)))


@pytest.mark.parametrize("r", [0, -2])
def test_non_positive_rank_is_refused(r):
    with pytest.raises(ConfigError, match="rank r must be a positive integer"):
        LoraConfig(r=r)


def test_applying_twice_is_refused():
    model = build()
    lora.apply_lora(model, LoraConfig())
    with pytest.raises(ConfigError, match="already has LoRA"):
        lora.apply_lora(model, LoraConfig())


def test_adapter_for_a_different_base_names_the_tensor_and_both_shapes(tmp_path):
    other = build(
        hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=64
    )
    lora.apply_lora(other, LoraConfig(r=4))
    lora.save_adapter(other, tmp_path / "adapter")
    with pytest.raises(ShapeMismatchError, match=r"q_proj\.lora_A\.weight has shape \(4, 32\).*\(4, 64\)"):
        lora.load_adapter(build(), tmp_path / "adapter")


def test_adapter_config_disagreeing_with_its_weights_is_refused(tmp_path):
    model = build()
    lora.apply_lora(model, LoraConfig(r=4))
    lora.save_adapter(model, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(CheckpointError, match="disagrees with r=8"):
        lora.load_adapter(build(), tmp_path / "adapter")
    config_path.write_text(json.dumps({**config, "target_modules": ["q_proj"]}))
    with pytest.raises(CheckpointError, match="unexpected"):
        lora.load_adapter(build(), tmp_path / "adapter")


def test_unsupported_peft_options_are_refused(tmp_path):
    model = build()
    lora.apply_lora(model, LoraConfig(r=2))
    lora.save_adapter(model, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
        lora.load_adapter(build(), tmp_path / "adapter")


def test_adapter_weights_with_adapter_names_in_keys_load(tmp_path):
    """Older peft versions kept the adapter name in saved keys (``lora_A.default.weight``)."""
    model = build()
    lora.apply_lora(model, LoraConfig(r=2))
    randomise_lora(model)
    lora.save_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    state = {k.replace(".weight", ".default.weight"): v for k, v in load_file(path).items()}
    save_file(state, path)
    fresh = build()
    lora.load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(INPUT_IDS), model(INPUT_IDS), atol=0, rtol=0)
