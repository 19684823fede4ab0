"""Llama 3: config, model, KV-cache forward and Hugging Face-format load/save.

Paper: Grattafiori et al. 2024, "The Llama 3 Herd of Models", arXiv:2407.21783
(architecture inherited from Touvron et al. 2023, arXiv:2302.13971).

Idea: a decoder-only transformer with pre-norm RMSNorm, a SwiGLU MLP, grouped-query
attention and rotary position embeddings (θ = 500 000, with Llama 3.1's ``llama3``
frequency scaling for long contexts). For layer input x:
    h   = x + W_o · Attn(RoPE(W_q n(x)), RoPE(W_k n(x)), W_v n(x))    n = RMSNorm
    out = h + W_down (SiLU(W_gate n(h)) ⊙ W_up n(h))                   (Shazeer 2020, SwiGLU)

The module tree and parameter names are exactly those of transformers'
``LlamaForCausalLM``, so ``state_dict()`` keys match HF one to one; the tests
(``tests/llm/model/test_llama.py``, ``test_llama_io.py``) copy weights between the two and
compare logits, hidden states, cached decoding and prefix (past key/value) behaviour.

Hooks for decoding methods and adapters (see ``Llama.forward`` and docs/llama3.md):
a static ``KVCache``, explicit position ids, 2-D padding or 4-D (tree) masks, a per-layer
key/value prefix, and the final hidden states.

Shapes: B batch, T new tokens, P prefix length, C cached tokens (cache.length),
S = P + C + T keys seen by each query, E hidden size, H query heads, Hkv key/value
heads, D head dim, F intermediate size, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import CheckpointError, ConfigError, DataError
from papernotes.llm.model import gguf, hf_io
from papernotes.llm.model.config import LlamaConfig
from papernotes.nn import fast_linear
from papernotes.nn.attention import attend, causal_mask, check_backend
from papernotes.nn.kv_cache import KVCache
from papernotes.nn.rmsnorm import RMSNorm
from papernotes.nn.rope import RotaryEmbedding, apply_rotary

logger = logging.getLogger(__name__)

PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE, a static cache and an optional stored prefix."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which cache/prefix entry this layer reads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        E, H, Hkv, D = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        # fast_linear.Linear: an nn.Linear whose matrix form tune_linears may choose (same state_dict)
        self.q_proj = fast_linear.Linear(E, H * D, bias=False)
        self.k_proj = fast_linear.Linear(E, Hkv * D, bias=False)
        self.v_proj = fast_linear.Linear(E, Hkv * D, bias=False)
        self.o_proj = fast_linear.Linear(H * D, E, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        backend: str,
        causal: bool,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, E), cos/sin (B, T, D) -> (B, T, E)."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, C + T, D), post-RoPE like HF's cache
        if prefix is not None:
            # stored keys, no RoPE: they play the role of HF past_key_values (peft prefix tuning)
            prefix_k, prefix_v = (p.to(k.dtype).expand(B, -1, -1, -1) for p in prefix)  # (B, Hkv, P, D)
            k = torch.cat((prefix_k, k), dim=2)  # (B, Hkv, P + C + T, D)
            v = torch.cat((prefix_v, v), dim=2)
        # GQA natively: attend() maps each of the Hkv heads to H / Hkv query heads
        out = attend(q, k, v, backend=backend, causal=causal, attn_mask=attn_mask)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H·D)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: W_down (SiLU(W_gate x) ⊙ W_up x)  (Shazeer 2020, arXiv:2002.05202, eq. 6)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = fast_linear.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = fast_linear.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = fast_linear.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, E) -> (B, T, E)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm residual block: x + Attn(norm(x)), then + MLP(norm(·))."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, **attention: Any
    ) -> torch.Tensor:
        """x (B, T, E) -> (B, T, E); ``attention`` holds LlamaAttention's keyword arguments."""
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, **attention)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """The body: embeddings, decoder layers and the final norm (HF's ``LlamaModel``)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        backend: str,
        causal: bool,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        prefix_kv: PrefixKV | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T), position_ids (B, T) -> final-norm hidden states (B, T, E).

        Masks and positions arrive resolved (``Llama.forward`` builds them); the cache is
        written here but advanced by the caller.
        """
        x = self.embed_tokens(input_ids)  # (B, T, E)
        cos, sin = self.rotary_emb(position_ids, x.dtype)  # (B, T, D) each, computed once for all layers
        for i, layer in enumerate(self.layers):
            prefix = prefix_kv[i] if prefix_kv is not None else None
            x = layer(
                x, cos, sin, backend=backend, causal=causal, attn_mask=attn_mask, cache=cache, prefix=prefix
            )
        return self.norm(x)


class Llama(nn.Module):
    """Llama causal LM with HF ``LlamaForCausalLM``'s parameter names (``model.*``, ``lm_head``).

    ``attention`` names the attention backend ("naive" | "sdpa" | "flash"); it is read
    by every layer at each forward and may be changed at any time.
    """

    def __init__(self, config: LlamaConfig, attention: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        self.model = LlamaModel(config)
        self.lm_head = fast_linear.Linear(config.hidden_size, config.vocab_size, bias=False)
        # adapter hook: a module whose call returns a PrefixKV (batch dim 1 or B); forward uses it when
        # no prefix_kv is passed, so generate() and every decoder see the prefix (prefix_tuning.py)
        self.prefix_encoder: nn.Module | None = None
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one tensor, two names (as in HF)

    @property
    def attention(self) -> str:
        return self._attention

    @attention.setter
    def attention(self, name: str) -> None:
        self._attention = check_backend(name)

    def _init_weights(self, module: nn.Module) -> None:
        # HF's init: N(0, initializer_range) for every linear and embedding weight; norms stay 1
        if isinstance(module, nn.Linear | nn.Embedding) and module.weight.device.type != "meta":
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters; tied weights count once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def setup_cache(
        self,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """A static KVCache for ``max_length`` tokens, in the model's dtype and device by default."""
        if max_length > self.config.max_position_embeddings:
            raise DataError(
                f"setup_cache: max_length={max_length} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        weight = self.lm_head.weight
        cfg = self.config
        return KVCache(
            cfg.num_hidden_layers,
            batch_size,
            cfg.num_key_value_heads,
            max_length,
            cfg.head_dim,
            dtype=dtype or weight.dtype,
            device=device if device is not None else weight.device,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        prefix_kv: PrefixKV | None = None,
        return_hidden: bool = False,
        logits: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) for token ids (B, T), or ``(logits, hidden)`` with ``return_hidden``.

        ``logits=False`` skips the LM head and returns the hidden states (B, T, E) alone: a drafter that
        scores only part of the vocabulary computes its own head (the tied head is 21 % of SmolLM2).

        Keys seen by each query are laid out as [prefix (P) | cache slots 0..C-1 | new (T)],
        S = P + C + T, with C = ``cache.length`` before this call.

        - ``cache``: from ``setup_cache``; new post-RoPE keys/values go to slots
          [C, C + T), and ``cache.length`` grows by T when the forward ends.
        - ``prefix_kv``: one (k, v) per layer, each (B or 1, Hkv, P, D): stored keys
          (no RoPE is applied to them), always visible. As with HF + peft prefix tuning,
          the prefix occupies positions 0..P-1, so default positions start at P + C.
          Without it, ``self.prefix_encoder()`` supplies the prefix when set.
        - ``position_ids``: (B, T) or (T,); default P + C + arange(T). Explicit ones are
          used as given (Medusa: position = depth in the tree).
        - ``attention_mask``: None -> causal (bottom-right aligned over the S keys).
          2-D (B, C + T) bool or 0/1 (HF's convention; (B, S) is also accepted and its
          prefix columns ignored): a key-padding mask combined with causal, the prefix
          always visible. 4-D (B or 1, 1 or H, T, S) bool (True = attend) or additive
          float: the whole mask, no causal added (tree attention).
        - ``hidden``: the final-norm output (B, T, E), HF's ``last_hidden_state``.
        """
        if input_ids.dim() != 2:
            raise DataError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if prefix_kv is None and self.prefix_encoder is not None:
            prefix_kv = self.prefix_encoder()
        P = self._check_prefix(prefix_kv, B)
        C = cache.length if cache is not None else 0
        if cache is not None:
            if cache.batch_size != B:
                raise DataError(f"cache was set up for batch_size={cache.batch_size}, got a batch of {B}")
            cache.check_room(T)
        position_ids = self._positions(position_ids, B, T, P, C, input_ids.device)
        causal, attn_mask = self._mask(attention_mask, B, T, P, C, input_ids.device)
        hidden = self.model(
            input_ids,
            position_ids,
            backend=self.attention,
            causal=causal,
            attn_mask=attn_mask,
            cache=cache,
            prefix_kv=prefix_kv,
        )  # (B, T, E)
        if cache is not None:
            cache.advance(T)
        if not logits:
            return hidden
        scores = self.lm_head(hidden)  # (B, T, V)
        return (scores, hidden) if return_hidden else scores

    def _check_prefix(self, prefix_kv: PrefixKV | None, batch_size: int) -> int:
        """Validate prefix shapes; return P (0 without a prefix)."""
        if prefix_kv is None:
            return 0
        cfg = self.config
        if len(prefix_kv) != cfg.num_hidden_layers:
            raise DataError(
                f"prefix_kv has {len(prefix_kv)} entries; "
                f"expected {cfg.num_hidden_layers} (one (k, v) per layer)"
            )
        length = prefix_kv[0][0].shape[-2]
        for i, (k, v) in enumerate(prefix_kv):
            for name, t in (("k", k), ("v", v)):
                ok = (
                    t.dim() == 4
                    and t.shape[0] in (1, batch_size)
                    and t.shape[1:]
                    == (
                        cfg.num_key_value_heads,
                        length,
                        cfg.head_dim,
                    )
                )
                if not ok:
                    raise DataError(
                        f"prefix_kv[{i}] {name} has shape {tuple(t.shape)}; expected "
                        f"({batch_size} or 1, {cfg.num_key_value_heads}, {length}, {cfg.head_dim})"
                    )
        return length

    def _positions(
        self, position_ids: torch.Tensor | None, B: int, T: int, P: int, C: int, device: torch.device
    ) -> torch.Tensor:
        """Resolve position ids to (B, T) and check them against max_position_embeddings."""
        limit = self.config.max_position_embeddings
        if position_ids is None:
            last = P + C + T - 1
            position_ids = torch.arange(P + C, P + C + T, device=device).expand(B, T)  # (B, T)
        else:
            if position_ids.dim() == 1:
                position_ids = position_ids.unsqueeze(0)  # (1, T)
            if position_ids.dim() != 2 or position_ids.shape[-1] != T or position_ids.shape[0] not in (1, B):
                raise DataError(
                    f"position_ids must have shape ({B}, {T}) or ({T},), got {tuple(position_ids.shape)}"
                )
            position_ids = position_ids.to(device).expand(B, T)  # (B, T)
            last = int(position_ids.max()) if T else 0
        if last >= limit:
            raise DataError(
                f"prompt of {T} tokens (+ cache of {C}, + prefix of {P}) reaches position {last}, which "
                f"exceeds max_position_embeddings={limit}"
            )
        return position_ids

    def _mask(
        self, attention_mask: torch.Tensor | None, B: int, T: int, P: int, C: int, device: torch.device
    ) -> tuple[bool, torch.Tensor | None]:
        """Turn the user's mask into attend()'s (causal, attn_mask) over S = P + C + T keys."""
        S = P + C + T
        if attention_mask is None:
            return T > 1, None  # one query (a decode step) sees every key: skip building a mask
        if attention_mask.dim() == 4:
            if attention_mask.shape[-2:] != (T, S) or attention_mask.shape[0] not in (1, B):
                raise DataError(
                    f"4-D attention_mask must have shape ({B} or 1, 1 or H, {T}, {S}) with "
                    f"S = prefix {P} + cache {C} + new {T}; got {tuple(attention_mask.shape)}"
                )
            return False, attention_mask.to(device)
        if (
            attention_mask.dim() != 2
            or attention_mask.shape[0] != B
            or attention_mask.shape[1] not in (C + T, S)
        ):
            raise DataError(
                f"attention_mask must be 2-D (B={B}, cache {C} + new {T} = {C + T}) or 4-D (B, 1, {T}, {S}); "
                f"got {tuple(attention_mask.shape)}"
            )
        keep = attention_mask.to(device).bool()[:, attention_mask.shape[1] - (C + T) :]  # (B, C + T)
        keep = torch.cat((keep.new_ones(B, P), keep), dim=1)  # (B, S): the prefix is always visible
        mask = causal_mask(T, S, device) & keep[:, None, None, :]  # (B, 1, T, S)
        # a fully padded query row would softmax to NaN and poison later layers through its keys;
        # letting each query see itself keeps padded rows finite (their outputs are meaningless anyway)
        own = torch.zeros(T, S, dtype=torch.bool, device=device)
        own[:, P + C :] = torch.eye(T, dtype=torch.bool, device=device)
        return False, mask | own  # (B, 1, T, S)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        attention: str = "sdpa",
        device: torch.device | str | None = None,
    ) -> Llama:
        """Load an HF Llama directory (config.json + model.safetensors or a sharded index) or a GGUF file.

        A GGUF file (llama.cpp's format, e.g. ``gguf.smollm2_gguf()``) is dequantised to float32 once and
        kept as an HF directory in the cache (``gguf.cached_directory``), which is then loaded as any other.
        ``dtype`` casts every weight (None keeps the checkpoint's dtype; float32 for GGUF); ``device`` is
        where the weights land (CPU by default). Raises CheckpointError or
        ShapeMismatchError naming the file or tensor at fault.
        """
        check_backend(attention)
        path = Path(path)
        if path.is_file():  # an HF model is a directory; a file is read as GGUF
            path = gguf.cached_directory(path)
        config = LlamaConfig.from_hf_dict(*hf_io.read_config(path))
        with torch.device("meta"):  # no allocation: the checkpoint tensors become the parameters
            model = cls(config, attention=attention)
        optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
        tensors = hf_io.read_weights(
            path,
            expected={name: tuple(t.shape) for name, t in model.state_dict().items()},
            optional=optional,
            ignore_suffixes=("rotary_emb.inv_freq",),
            device=device,
        )
        if dtype is None:
            dtype = tensors["model.embed_tokens.weight"].dtype
        tensors = {name: t.to(dtype) for name, t in tensors.items()}
        if config.tie_word_embeddings:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        model.load_state_dict(tensors, strict=True, assign=True)
        if config.tie_word_embeddings:  # assign=True replaced the shared Parameter with two
            model.lm_head.weight = model.model.embed_tokens.weight
        model.model.rotary_emb.to(device or "cpu")  # recompute frequencies where the weights live
        logger.info("loaded %s (%d parameters, %s)", path, model.num_parameters(), dtype)
        return model.eval()  # like transformers: inference mode by default (there is no dropout anyway)

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow (or shrink) the vocabulary to ``vocab_size`` rows, as HF's method does.

        New rows of the embedding and of ``lm_head`` start at the mean of the existing rows, so that
        new tokens (e.g. chat markers) begin as an "average" token instead of a random one whose logit
        could dominate; a tied ``lm_head`` stays tied.
        """
        old = self.config.vocab_size
        if vocab_size == old:
            return
        if vocab_size < 1:
            raise ConfigError(f"vocab_size must be >= 1, got {vocab_size}")

        def resized(weight: torch.Tensor) -> nn.Parameter:
            new = weight.new_empty(vocab_size, weight.shape[1])
            keep = min(old, vocab_size)
            new[:keep] = weight[:keep]
            new[keep:] = weight.mean(dim=0)
            return nn.Parameter(new, requires_grad=weight.requires_grad)

        with torch.no_grad():
            embed = self.model.embed_tokens
            embed.weight = resized(embed.weight)
            embed.num_embeddings = vocab_size
            if self.config.tie_word_embeddings:
                self.lm_head.weight = embed.weight
            else:
                self.lm_head.weight = resized(self.lm_head.weight)
            self.lm_head.out_features = vocab_size
        self.config = dataclasses.replace(self.config, vocab_size=vocab_size)

    def save_pretrained(self, path: str | Path, max_shard_size: int | str | None = None) -> Path:
        """Write an HF directory loadable by ``transformers.LlamaForCausalLM.from_pretrained``.

        config.json (+ generation_config.json when bos/eos are set) and model.safetensors,
        or ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``
        when ``max_shard_size`` (bytes, or "500MB"-style) is given. Tied weights are stored
        once (embed_tokens). The directory appears atomically: it is written beside
        ``path`` and renamed into place, replacing an old one only when complete.
        """
        state = self.state_dict()
        with torch.device("meta"):
            architecture = set(type(self)(self.config).state_dict())
        if extra := sorted(set(state) - architecture):
            raise CheckpointError(
                f"save_pretrained: the model holds parameters outside the Llama architecture "
                f"({extra[0]}, ... {len(extra)} in all); merge LoRA with lora.merge_and_unload or "
                "detach the prefix first, or save the adapter with its own save function"
            )
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight")  # HF convention: the tie is restored from the config
        config_dict = self.config.to_hf_dict()
        config_dict["torch_dtype"] = str(self.lm_head.weight.dtype).removeprefix("torch.")
        generation = {
            key: value
            for key in ("bos_token_id", "eos_token_id")
            if (value := getattr(self.config, key)) is not None
        }
        return hf_io.write_directory(path, config_dict, state, generation or None, max_shard_size)
