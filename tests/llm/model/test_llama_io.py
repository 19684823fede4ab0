"""HF-format load/save: round trips through transformers' own loader and saver, and bad directories."""

import dataclasses
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from papernotes.core.config import preset
from papernotes.errors import CheckpointError, ShapeMismatchError
from papernotes.llm.model.config import PRESETS, LlamaConfig
from papernotes.llm.model.llama import Llama


def tiny(**changes) -> LlamaConfig:
    return dataclasses.replace(preset(PRESETS, "tiny"), **changes)


def build(config: LlamaConfig, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(config).eval()


INPUT_IDS = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@torch.no_grad()
def test_our_directory_loads_in_transformers_with_equal_logits(tmp_path, tied):
    model = build(tiny(tie_word_embeddings=tied))
    model.save_pretrained(tmp_path / "model")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager").eval()
    assert hf.config.tie_word_embeddings == tied
    torch.testing.assert_close(hf(INPUT_IDS).logits, model(INPUT_IDS), atol=1e-4, rtol=0)
    stored = load_file(tmp_path / "model" / "model.safetensors")
    assert ("lm_head.weight" in stored) != tied  # tied weights are stored once, as HF does
    generation = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2}


@pytest.mark.parametrize("shard_size", [None, "50KB"], ids=["single-file", "sharded"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@torch.no_grad()
def test_transformers_directory_loads_with_equal_logits(tmp_path, tied, shard_size):
    config = tiny(tie_word_embeddings=tied)
    hf_config = transformers.LlamaConfig(**config.to_hf_dict(), attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    hf.save_pretrained(tmp_path / "hf", **kwargs)
    if shard_size:
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model = Llama.from_pretrained(tmp_path / "hf")
    assert model.config == config
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    torch.testing.assert_close(model(INPUT_IDS), hf(INPUT_IDS).logits, atol=1e-4, rtol=0)


@torch.no_grad()
def test_sharded_save_round_trips_through_both_loaders(tmp_path):
    model = build(tiny())
    model.save_pretrained(tmp_path / "m", max_shard_size="40KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "m" / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(model.state_dict())
    reloaded = Llama.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(reloaded(INPUT_IDS), model(INPUT_IDS), atol=0, rtol=0)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    torch.testing.assert_close(hf(INPUT_IDS).logits, model(INPUT_IDS), atol=1e-4, rtol=0)


def test_save_replaces_an_existing_directory_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "model"
    build(tiny(), seed=0).save_pretrained(target)
    (target / "stale.txt").write_text("from the old save")
    second = build(tiny(), seed=1)
    second.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (target / "stale.txt").exists()
    reloaded = Llama.from_pretrained(target)
    torch.testing.assert_close(reloaded.lm_head.weight, second.lm_head.weight, atol=0, rtol=0)


def test_from_pretrained_casts_to_the_requested_dtype(tmp_path):
    build(tiny()).save_pretrained(tmp_path / "m")
    model = Llama.from_pretrained(tmp_path / "m", dtype=torch.bfloat16, attention="naive")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.attention == "naive"
    with torch.no_grad():
        assert model(INPUT_IDS).dtype == torch.bfloat16


def test_rotary_inv_freq_keys_in_old_checkpoints_are_ignored(tmp_path):
    build(tiny()).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(tensors, weights, metadata={"format": "pt"})
    Llama.from_pretrained(tmp_path / "m")


@pytest.fixture
def saved(tmp_path):
    build(tiny()).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_missing_directory_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Llama.from_pretrained(tmp_path / "nope")


def test_missing_or_corrupt_config_json_names_the_file(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        Llama.from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        Llama.from_pretrained(saved)


def test_directory_without_weights_raises_checkpoint_error(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights: expected model\.safetensors"):
        Llama.from_pretrained(saved)


def test_truncated_safetensors_names_the_file(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        Llama.from_pretrained(saved)


def rewrite(saved, edit):
    weights = saved / "model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights, metadata={"format": "pt"})


def test_missing_tensor_is_named(saved):
    rewrite(saved, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): model\.layers\.1\.mlp\.up_proj\.weight"):
        Llama.from_pretrained(saved)


def test_untied_checkpoint_without_lm_head_is_rejected(saved):
    rewrite(saved, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        Llama.from_pretrained(saved)


def test_unexpected_tensor_is_named(saved):
    rewrite(saved, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(2)}))
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor\(s\): model\.layers\.2\.mlp\.up_proj\.weight"
    ):
        Llama.from_pretrained(saved)


def test_shape_mismatch_names_the_tensor_and_both_shapes(saved):
    rewrite(saved, lambda t: t.update({"model.norm.weight": torch.ones(63)}))
    with pytest.raises(ShapeMismatchError, match=r"'model\.norm\.weight' .* shape \(63,\).* implies \(64,\)"):
        Llama.from_pretrained(saved)
