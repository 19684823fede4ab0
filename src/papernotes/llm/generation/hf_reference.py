"""Hugging Face ``generate()`` wrapped as a decoder, for side-by-side timing on the same weights.

HF's assisted generation (``generate(assistant_model=draft)``) is the established peer of
our speculative decoding. It is run on the HF exports of the very weights our decoders use.
``transformers`` is a development extra; :func:`transformers_available` lets callers skip
the comparison when it is not installed.

Settings that make the comparison fair: no early stop at EOS (our benchmark has none),
no top-k/top-p unless asked (HF defaults to top_k=50), and for "defaults" HF's own
assistant schedule (20 draft tokens, "heuristic": +2 after a fully accepted block, −1
otherwise), reset before every prompt because HF keeps the adapted value between calls.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch

from papernotes.llm.generation.benchmark import Decoder
from papernotes.llm.generation.generate import DecodeStats, GenerationConfig

HF_DEFAULT_ASSISTANT_TOKENS = 20  # transformers' GenerationConfig.num_assistant_tokens default


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def load_hf_model(directory: str | Path) -> torch.nn.Module:
    """``LlamaForCausalLM`` from one of our exports, fp32, eval mode, eager-free SDPA attention."""
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_decoder(
    model: torch.nn.Module,
    assistant: torch.nn.Module | None = None,
    num_assistant_tokens: int | None = None,
    prompt_lookup: int | None = None,
) -> Decoder:
    """A decoder running ``model.generate``; with ``assistant``, HF assisted generation; with
    ``prompt_lookup`` (γ), HF's prompt lookup decoding (``prompt_lookup_num_tokens``).

    ``num_assistant_tokens=None`` keeps HF's defaults (20, heuristic schedule); an int fixes γ
    with the constant schedule, as our speculative decoding uses.
    """

    def decode(input_ids: torch.Tensor, config: GenerationConfig) -> tuple[torch.Tensor, DecodeStats]:
        kwargs: dict = {
            "max_new_tokens": config.max_new_tokens,
            "do_sample": config.temperature > 0,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": 0,
            "top_k": config.top_k or 0,
            "top_p": config.top_p or 1.0,
        }
        if config.temperature > 0:
            kwargs["temperature"] = config.temperature
        if assistant is not None:
            gen_cfg = assistant.generation_config
            gen_cfg.num_assistant_tokens = num_assistant_tokens or HF_DEFAULT_ASSISTANT_TOKENS
            gen_cfg.num_assistant_tokens_schedule = "constant" if num_assistant_tokens else "heuristic"
            kwargs["assistant_model"] = assistant
        if prompt_lookup is not None:
            kwargs["prompt_lookup_num_tokens"] = prompt_lookup
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        wall = time.perf_counter() - start
        new = out[:, input_ids.shape[1] :]
        return new, DecodeStats(tokens=new.shape[1], wall_s=wall)

    return decode
