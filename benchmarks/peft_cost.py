"""Benchmark: LoRA and Prefix-Tuning cost, against the base model in the same run.

Claims under test (issue "Parameter-efficient fine-tuning"):
- merged LoRA adds no decoding latency: time(merged) / time(base) ≤ 1.02 (Hu et al. 2021 §4);
- the optimizer state shrinks with the trainable parameters (AdamW keeps two fp32 moments each).

Weights are random (speed and memory do not depend on what a model learned), so the benchmark
needs no cache and no training: a Llama of the given preset, LoRA with non-zero B on Wq and Wv,
a prefix of L virtual tokens. Decoding is plain greedy ``generate``, batch 1, with the three
models interleaved so that drift on a noisy machine affects them alike. The optimizer state is
measured by running one AdamW step of ``core.train`` for each method. Prints ONE JSON object.

    python benchmarks/peft_cost.py                      # pn-small, r = 8, L = 10
    python benchmarks/peft_cost.py --model pn-base --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from papernotes.core.config import preset
from papernotes.core.train import short_run, train
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora, prefix_tuning
from papernotes.llm.training.pretrain import lm_loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pn-small", help="Llama preset")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--num-virtual-tokens", type=int, default=10, help="prefix length")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def build(name: str, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(preset(PRESETS, name, "model preset")).eval()


def optimizer_bytes(model: Llama, vocab: int) -> int:
    """AdamW state after one optimizer step of core.train on random tokens."""
    tokens = torch.randint(0, vocab, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    config = dataclasses.replace(short_run(1, 2, 1e-3), progress=False)
    return train(model, lm_loss, lambda step, micro: batch, config).optimizer_state_bytes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    vocab = preset(PRESETS, args.model, "model preset").vocab_size
    base = build(args.model)
    adapted = build(args.model)
    lora.apply_lora(adapted, lora.LoraConfig(r=args.r, lora_alpha=2 * args.r))
    with torch.no_grad():  # B ≠ 0, as after training, so the unmerged path does real work
        for layer in lora.lora_layers(adapted).values():
            layer.lora_B.weight.normal_(0, 0.01)
    merged = build(args.model)  # the same adapter, folded into W
    lora.apply_lora(merged, lora.LoraConfig(r=args.r, lora_alpha=2 * args.r))
    merged.load_state_dict(adapted.state_dict())
    lora.merge_and_unload(merged)
    models = {"base": base, "lora_unmerged": adapted, "lora_merged": merged}

    prompt = torch.randint(0, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(max_new_tokens=args.new_tokens)
    for model in models.values():  # warm-up: first calls allocate caches and pick kernels
        generate(model, prompt, config)
    seconds = dict.fromkeys(models, 0.0)
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            generate(model, prompt, config)
            seconds[name] += time.perf_counter() - start

    memory = {"full": optimizer_bytes(build(args.model), vocab)}
    with_lora = build(args.model)
    lora.apply_lora(with_lora, lora.LoraConfig(r=args.r, lora_alpha=2 * args.r))
    memory["lora"] = optimizer_bytes(with_lora, vocab)
    with_prefix = build(args.model)
    prefix_tuning.apply_prefix_tuning(
        with_prefix, prefix_tuning.PrefixTuningConfig(num_virtual_tokens=args.num_virtual_tokens)
    )
    memory["prefix_with_mlp"] = optimizer_bytes(with_prefix, vocab)

    ratio = seconds["lora_merged"] / seconds["base"]
    print(
        json.dumps(
            {
                "model": args.model,
                "r": args.r,
                "num_virtual_tokens": args.num_virtual_tokens,
                "tokens_per_s": {k: args.repeats * args.new_tokens / v for k, v in seconds.items()},
                "time_ratio_to_base": {k: v / seconds["base"] for k, v in seconds.items()},
                "optimizer_state_bytes": memory,
                "optimizer_state_ratio_to_full": {k: v / memory["full"] for k, v in memory.items()},
                "goals": {
                    "merged_lora_latency_ratio": {"value": ratio, "goal": "<= 1.02", "met": ratio <= 1.02}
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
