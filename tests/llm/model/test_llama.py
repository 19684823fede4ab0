"""Llama against transformers' LlamaForCausalLM, and the decoding hooks against the full forward."""

import dataclasses

import pytest
import torch
import transformers
from transformers import DynamicCache

from papernotes.core.config import preset
from papernotes.errors import ConfigError, DataError
from papernotes.llm.model.config import PRESETS, LlamaConfig
from papernotes.llm.model.llama import Llama
from papernotes.nn.attention import causal_mask
from papernotes.nn.rope import rope_inverse_frequencies

ATOL = 1e-4


def tiny(**changes) -> LlamaConfig:
    return dataclasses.replace(preset(PRESETS, "tiny"), **changes)


def build(config: LlamaConfig, attention: str = "sdpa", seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(config, attention=attention).eval()
    with torch.no_grad():  # non-trivial norm gains, so a swapped norm would show
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param.uniform_(0.5, 1.5)
    return model


def hf_twin(model: Llama) -> transformers.LlamaForCausalLM:
    """HF's eager reference with our weights."""
    hf_config = transformers.LlamaConfig(**model.config.to_hf_dict(), attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


CONFIGS = {
    "gqa-llama3-untied": tiny(),
    "gqa-llama3-tied": tiny(tie_word_embeddings=True),
    "mha-no-scaling": tiny(num_key_value_heads=4, rope_scaling=None, rope_theta=10000.0),
}


def test_tiny_preset_uses_gqa_and_llama3_scaling_that_changes_frequencies():
    config = tiny()
    assert config.num_key_value_heads < config.num_attention_heads
    plain = rope_inverse_frequencies(config.head_dim, config.rope_theta)
    scaled = rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    assert not torch.equal(plain, scaled)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_state_dict_keys_and_shapes_equal_hf(tied):
    model = build(tiny(tie_word_embeddings=tied))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf_dict()))
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert ours == {name: tuple(t.shape) for name, t in hf.state_dict().items()}
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert model.num_parameters() == hf.num_parameters()


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_logits_match_hf(name):
    model = build(CONFIGS[name])
    hf = hf_twin(model)
    input_ids = tokens(2, 40)
    logits = model(input_ids)
    assert logits.shape == (2, 40, 256) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, hf(input_ids).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_logits_match_hf_beyond_the_original_context_where_scaling_matters():
    model = build(tiny())
    hf = hf_twin(model)
    input_ids = tokens(1, 128)  # the whole 128-position range, twice original_max_position_embeddings
    torch.testing.assert_close(model(input_ids), hf(input_ids).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_return_hidden_equals_hf_last_hidden_state():
    model = build(tiny())
    hf = hf_twin(model)
    input_ids = tokens(2, 12)
    logits, hidden = model(input_ids, return_hidden=True)
    reference = hf.model(input_ids).last_hidden_state
    assert hidden.shape == (2, 12, 64)
    torch.testing.assert_close(hidden, reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, model.lm_head(hidden))


@torch.no_grad()
def test_left_padded_batch_with_2d_mask_matches_hf_on_real_tokens():
    model = build(tiny())
    hf = hf_twin(model)
    input_ids = tokens(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # row 1 is left-padded by 4
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF's generate() passes
    ours = model(input_ids, position_ids=positions, attention_mask=mask)
    theirs = hf(input_ids, position_ids=positions, attention_mask=mask).logits
    assert torch.isfinite(ours).all()  # fully padded rows must not turn into NaN
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=ATOL, rtol=0)
    # the same batch decoded with the cache: the 2-D mask covers cached + new tokens (HF's convention)
    cache = model.setup_cache(batch_size=2, max_length=10)
    prefill = model(input_ids[:, :7], position_ids=positions[:, :7], attention_mask=mask[:, :7], cache=cache)
    steps = [
        model(input_ids[:, t : t + 1], positions[:, t : t + 1], mask[:, : t + 1], cache) for t in range(7, 10)
    ]
    cached = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(cached[real], ours[real], atol=ATOL, rtol=0)


@torch.no_grad()
def test_cached_decoding_one_token_at_a_time_equals_full_forward():
    model = build(tiny())
    input_ids = tokens(2, 16)
    full = model(input_ids)
    cache = model.setup_cache(batch_size=2, max_length=20)
    steps = [model(input_ids[:, :10], cache=cache)]
    for t in range(10, 16):
        steps.append(model(input_ids[:, t : t + 1], cache=cache))
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_chunked_prefill_with_cache_equals_full_forward_and_matches_hf_cache():
    model = build(tiny())
    hf = hf_twin(model)
    input_ids = tokens(1, 15)
    cache = model.setup_cache(batch_size=1, max_length=15)
    chunks = [model(input_ids[:, a:b], cache=cache) for a, b in ((0, 4), (4, 11), (11, 15))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), model(input_ids), atol=ATOL, rtol=0)
    hf_cache = DynamicCache(config=hf.config)
    hf_chunks = [
        hf(input_ids[:, a:b], past_key_values=hf_cache).logits for a, b in ((0, 4), (4, 11), (11, 15))
    ]
    torch.testing.assert_close(torch.cat(chunks, dim=1), torch.cat(hf_chunks, dim=1), atol=ATOL, rtol=0)


@torch.no_grad()
def test_explicit_positions_and_a_causal_4d_mask_reproduce_the_default():
    model = build(tiny())
    input_ids = tokens(2, 9)
    default = model(input_ids)
    positions = torch.arange(9)
    allowed = causal_mask(9, 9)[None, None]  # (1, 1, T, S) bool
    additive = torch.zeros(9, 9).masked_fill(~causal_mask(9, 9), float("-inf"))[None, None]
    torch.testing.assert_close(model(input_ids, position_ids=positions), default)
    torch.testing.assert_close(model(input_ids, position_ids=positions, attention_mask=allowed), default)
    torch.testing.assert_close(model(input_ids, attention_mask=additive.expand(2, 1, 9, 9)), default)


# A Medusa-style candidate tree after a prompt: node -> parent (-1 = root). Depths 0, 1, 1, 2, 2, 2.
TREE_PARENTS = [-1, 0, 0, 1, 1, 2]


def tree_layout(parents):
    """(depth per node, (N, N) ancestor-or-self mask, root-to-leaf paths)."""
    n = len(parents)
    ancestors = torch.eye(n, dtype=torch.bool)
    depth = [0] * n
    for node, parent in enumerate(parents):
        if parent >= 0:
            ancestors[node] |= ancestors[parent]
            depth[node] = depth[parent] + 1
    leaves = [node for node in range(n) if node not in parents]
    paths = [[j for j in range(n) if ancestors[leaf, j]] for leaf in leaves]
    return torch.tensor(depth), ancestors, paths


@torch.no_grad()
def test_tree_mask_with_depth_positions_equals_running_each_path_separately():
    model = build(tiny())
    prompt, tree_tokens = tokens(1, 7), tokens(1, len(TREE_PARENTS), seed=2)
    depth, ancestors, paths = tree_layout(TREE_PARENTS)
    cache = model.setup_cache(batch_size=1, max_length=32)
    model(prompt, cache=cache)
    C, N = cache.length, len(TREE_PARENTS)
    mask = torch.cat((torch.ones(N, C, dtype=torch.bool), ancestors), dim=1)[None, None]  # (1, 1, N, C + N)
    tree_logits = model(tree_tokens, position_ids=C + depth, attention_mask=mask, cache=cache)
    for path in paths:
        sequence = torch.cat((prompt, tree_tokens[:, path]), dim=1)
        torch.testing.assert_close(tree_logits[:, path], model(sequence)[:, C:], atol=ATOL, rtol=0)


@torch.no_grad()
def test_compacting_the_accepted_tree_path_lets_decoding_continue_exactly():
    model = build(tiny())
    prompt, tree_tokens = tokens(1, 7), tokens(1, len(TREE_PARENTS), seed=2)
    depth, ancestors, paths = tree_layout(TREE_PARENTS)
    cache = model.setup_cache(batch_size=1, max_length=32)
    model(prompt, cache=cache)
    C, N = cache.length, len(TREE_PARENTS)
    mask = torch.cat((torch.ones(N, C, dtype=torch.bool), ancestors), dim=1)[None, None]
    model(tree_tokens, position_ids=C + depth, attention_mask=mask, cache=cache)
    accepted = paths[1]  # [0, 1, 4]
    cache.compact(C, accepted)
    next_token = tokens(1, 1, seed=3)
    after = model(next_token, cache=cache)
    sequence = torch.cat((prompt, tree_tokens[:, accepted], next_token), dim=1)
    torch.testing.assert_close(after, model(sequence)[:, -1:], atol=ATOL, rtol=0)


def random_prefix(config: LlamaConfig, batch: int, length: int, requires_grad: bool = False):
    generator = torch.Generator().manual_seed(5)
    shape = (batch, config.num_key_value_heads, length, config.head_dim)
    return [
        (
            torch.randn(shape, generator=generator).requires_grad_(requires_grad),
            torch.randn(shape, generator=generator).requires_grad_(requires_grad),
        )
        for _ in range(config.num_hidden_layers)
    ]


@torch.no_grad()
def test_prefix_kv_matches_hf_with_the_prefix_as_past_key_values():
    model = build(tiny())
    hf = hf_twin(model)
    prefix = random_prefix(model.config, batch=2, length=5)
    input_ids = tokens(2, 8)
    ours = model(input_ids, prefix_kv=prefix)
    hf_cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in prefix], config=hf.config)
    theirs = hf(input_ids, past_key_values=hf_cache).logits  # positions 5..12, prefix visible everywhere
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # peft's convention for the 2-D mask: ones for the prefix, then the real mask
    mask = torch.ones(2, 8, dtype=torch.long)
    hf_cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in prefix], config=hf.config)
    theirs = hf(
        input_ids, past_key_values=hf_cache, attention_mask=torch.ones(2, 13, dtype=torch.long)
    ).logits
    torch.testing.assert_close(
        model(input_ids, prefix_kv=prefix, attention_mask=mask), theirs, atol=ATOL, rtol=0
    )


@torch.no_grad()
def test_prefix_kv_with_cached_decoding_equals_full_forward_with_prefix():
    model = build(tiny())
    prefix = random_prefix(model.config, batch=1, length=3)  # batch 1 broadcasts over the batch
    input_ids = tokens(2, 9)
    full = model(input_ids, prefix_kv=prefix)
    cache = model.setup_cache(batch_size=2, max_length=9)
    steps = [model(input_ids[:, :6], prefix_kv=prefix, cache=cache)]
    steps += [model(input_ids[:, t : t + 1], prefix_kv=prefix, cache=cache) for t in range(6, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def test_prefix_kv_receives_gradients_while_frozen_weights_do_not():
    model = build(tiny()).requires_grad_(False)
    prefix = random_prefix(model.config, batch=1, length=2, requires_grad=True)
    model(tokens(1, 6), prefix_kv=prefix).logsumexp(-1).sum().backward()
    assert all(k.grad is not None and v.grad is not None and k.grad.abs().sum() > 0 for k, v in prefix)
    assert model.num_parameters(trainable_only=True) == 0


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flash"])
@torch.no_grad()
def test_attention_backends_give_equal_logits(backend):
    reference = build(tiny(), attention="naive")
    model = build(tiny(), attention=backend)
    input_ids = tokens(2, 12)
    torch.testing.assert_close(model(input_ids), reference(input_ids), atol=ATOL, rtol=0)
    # a decode step (1 query against a longer cache) exercises the bottom-right causal alignment
    caches = [m.setup_cache(2, 13) for m in (model, reference)]
    for m, cache in zip((model, reference), caches):
        m(input_ids, cache=cache)
    step = tokens(2, 1, seed=4)
    torch.testing.assert_close(
        model(step, cache=caches[0]), reference(step, cache=caches[1]), atol=ATOL, rtol=0
    )


def test_attention_backend_is_validated_and_switchable_after_construction():
    model = build(tiny())
    input_ids = tokens(1, 6)
    with torch.no_grad():
        before = model(input_ids)
        model.attention = "naive"
        torch.testing.assert_close(model(input_ids), before, atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="naive, sdpa, flash"):
        model.attention = "xformers"
    with pytest.raises(ConfigError, match="unknown attention backend 'bogus'"):
        Llama(tiny(), attention="bogus")


def test_prompt_beyond_max_position_embeddings_raises_data_error():
    model = build(tiny())
    with pytest.raises(DataError, match=r"prompt of 129 tokens .* max_position_embeddings=128"):
        model(tokens(1, 129))
    cache = model.setup_cache(1, 128)
    model(tokens(1, 100), cache=cache)
    with pytest.raises(DataError, match=r"cache of 100.*max_position_embeddings=128"):
        model(tokens(1, 1), prefix_kv=random_prefix(model.config, 1, 28), cache=cache)


def test_cache_overflow_and_oversized_cache_raise_data_error():
    model = build(tiny())
    cache = model.setup_cache(1, 8)
    model(tokens(1, 6), cache=cache)
    with pytest.raises(DataError, match="max_length=8"):
        model(tokens(1, 3), cache=cache)
    assert cache.length == 6  # nothing was written by the failed call
    with pytest.raises(DataError, match="max_position_embeddings=128"):
        model.setup_cache(1, 129)


def test_bf16_model_returns_bf16_logits_close_to_fp32():
    model = build(tiny())
    input_ids = tokens(1, 20)
    with torch.no_grad():
        reference = model(input_ids)
        logits = model.to(torch.bfloat16)(input_ids)
    assert logits.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert (logits.float() - reference).abs().max() < 0.1


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="num_key_value_heads=3"):
        tiny(num_key_value_heads=3)
    with pytest.raises(ConfigError, match="head_dim"):
        tiny(head_dim=15)


def test_config_round_trips_through_hf_dicts_of_both_transformers_layouts():
    config = tiny(tie_word_embeddings=True, eos_token_id=[2, 3])
    assert LlamaConfig.from_hf_dict(config.to_hf_dict()) == config
    saved = transformers.LlamaConfig(**config.to_hf_dict()).to_dict()  # 5.x layout: rope_parameters
    assert "rope_parameters" in saved
    assert LlamaConfig.from_hf_dict(saved) == config


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"model_type": "mistral"}, "model_type"),
        ({"vocab_size": None}, "vocab_size"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling"),
    ],
)
def test_from_hf_dict_rejects_what_it_cannot_honour(change, field):
    data = {**tiny().to_hf_dict(), **change}
    with pytest.raises(ConfigError, match=field):
        LlamaConfig.from_hf_dict(data, source="x/config.json")
