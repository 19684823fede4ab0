"""Time decoding methods against plain decoding in one process, on the same prompts.

Every method is a *decoder*: a function ``(input_ids (1, T), GenerationConfig) -> (new_ids,
DecodeStats)``, so plain decoding, speculative decoding, prompt lookup, Medusa, MTP and
Hugging Face's ``generate`` are measured by one loop. Each decoder is warmed up once, then
run on every prompt; rates are totals over prompts (tokens / seconds), so long and short
prompts weigh by their work. Speedups are against the ``plain`` decoder at the same
temperature, measured in the same run. Greedy outputs are compared with plain greedy
token for token: a lossless method must match on every prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from papernotes.llm.generation.generate import DecodeStats, GenerationConfig

logger = logging.getLogger(__name__)

Decoder = Callable[[torch.Tensor, GenerationConfig], tuple[torch.Tensor, DecodeStats]]


def validation_prompts(
    tokens: np.ndarray, num_prompts: int, prompt_len: int, seed: int = 0
) -> list[torch.Tensor]:
    """Fixed prompts: ``num_prompts`` windows of ``prompt_len`` tokens from a token stream, each (1, T)."""
    rng = np.random.default_rng(seed)
    starts = sorted(rng.integers(0, len(tokens) - prompt_len, size=num_prompts).tolist())
    return [torch.from_numpy(tokens[s : s + prompt_len].astype(np.int64))[None] for s in starts]


def run_decoder(
    decoder: Decoder, prompts: Sequence[torch.Tensor], config: GenerationConfig, warm_up: bool = True
) -> dict[str, Any]:
    """Run ``decoder`` on every prompt (after a short untimed warm-up run); totals and the outputs."""
    if warm_up:
        decoder(prompts[0], replace(config, max_new_tokens=min(8, config.max_new_tokens)))
    total = DecodeStats()
    outputs = []
    for i, prompt in enumerate(prompts):
        ids, stats = decoder(prompt, replace(config, seed=config.seed + i))
        outputs.append(ids[0].tolist())
        total.add(stats)
    return {"stats": total.as_dict(), "outputs": outputs}


def benchmark_decoders(
    decoders: dict[str, Decoder],
    prompts: Sequence[torch.Tensor],
    temperatures: Sequence[float] = (0.0, 0.8),
    max_new_tokens: int = 64,
    seed: int = 0,
    sampled: Collection[str] | None = None,
    warm_up: bool = True,
) -> list[dict[str, Any]]:
    """One row per (decoder, temperature) with tokens/s, τ, α, speedup over ``plain`` and exactness.

    ``decoders`` must contain ``"plain"``; it runs first at each temperature. ``sampled`` names the
    decoders that also run at temperatures above 0 (None: all of them); the others run greedy only.
    ``warm_up=False`` skips each decoder's warm-up run, for decoders already warmed by an earlier call.
    """
    if "plain" not in decoders:
        raise ValueError("benchmark_decoders needs a 'plain' decoder as the baseline")
    rows = []
    for temperature in temperatures:
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        names = ["plain", *[n for n in decoders if n != "plain"]]
        if temperature > 0 and sampled is not None:
            names = [n for n in names if n == "plain" or n in sampled]
        baseline: dict[str, Any] | None = None
        for name in names:
            logger.info("decoding benchmark: %s at temperature %s", name, temperature)
            result = run_decoder(decoders[name], prompts, config, warm_up)
            baseline = baseline or result
            stats = result["stats"]
            rows.append(
                {
                    "method": name,
                    "temperature": temperature,
                    **stats,
                    "speedup": stats["tokens_per_s"] / baseline["stats"]["tokens_per_s"],
                    # lossless methods must reproduce plain greedy exactly; sampling differs by design
                    "matches_plain": result["outputs"] == baseline["outputs"] if temperature == 0 else None,
                }
            )
    return rows
