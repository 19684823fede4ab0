"""Benchmark: LoRA and Prefix-Tuning cost, against the base model in the same run.

Claims under test (issues "Parameter-efficient fine-tuning" and 18):
- merged LoRA adds no decoding latency: time(merged) / time(base) ≤ 1.02 (Hu et al. 2021 §4);
- the optimizer state shrinks with the trainable parameters (AdamW keeps two fp32 moments each);
- a LoRA or prefix step is cheaper than a full one: the frozen weights get no gradient (backward computes
  the input gradients only, about 2/3 of a full step's matrix work).

By default the model is the real base, SmolLM2-135M-Instruct (from its GGUF file); ``--model`` also takes a
Llama preset with random weights (speed and memory do not depend on what a model learned). LoRA has
non-zero B on Wq and Wv; the prefix has L virtual tokens. Decoding is plain greedy ``generate``, batch 1,
with the three models interleaved so that drift on a noisy machine affects them alike. The optimizer state
and the step time are measured by running a few AdamW steps of ``core.train`` (fp32) for each method.
Prints ONE JSON object.

    python benchmarks/peft_cost.py                      # SmolLM2-135M-Instruct, r = 8, L = 10
    python benchmarks/peft_cost.py --model pn-small --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from papernotes.core.config import preset
from papernotes.core.train import short_run, train
from papernotes.llm.experiments.target import default_model_path
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora, prefix_tuning
from papernotes.llm.training.pretrain import lm_loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2", help="smollm2 (the base, from its GGUF file) or a Llama preset"
    )
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--num-virtual-tokens", type=int, default=10, help="prefix length")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=3, help="AdamW steps timed per method")
    parser.add_argument("--train-batch", type=int, default=8, help="rows of --train-len tokens per step")
    parser.add_argument("--train-len", type=int, default=80, help="tokens per training row")
    return parser.parse_args(argv)


def build(name: str, seed: int = 0) -> Llama:
    if name == "smollm2":
        return Llama.from_pretrained(default_model_path(), dtype=torch.float32).eval()
    torch.manual_seed(seed)
    return Llama(preset(PRESETS, name, "model preset")).eval()


def train_cost(model: Llama, vocab: int, args: argparse.Namespace) -> dict[str, float]:
    """AdamW state bytes and seconds per step over a few fp32 steps of core.train on random tokens."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (args.train_batch, args.train_len + 1), generator=gen)
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    config = short_run(args.train_steps, args.train_batch, 1e-4)
    config = dataclasses.replace(config, progress=False, precision="fp32")
    result = train(model, lm_loss, lambda step, micro: batch, config)
    return {"optimizer_state_bytes": result.optimizer_state_bytes, "step_s": result.wall_s / args.train_steps}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = build(args.model)
    vocab = base.config.vocab_size
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

    del models, base, adapted, merged
    full = build(args.model).requires_grad_(True)
    cost = {"full": train_cost(full, vocab, args)}
    del full
    with_lora = build(args.model)
    lora.apply_lora(with_lora, lora.LoraConfig(r=args.r, lora_alpha=2 * args.r))
    cost["lora"] = train_cost(with_lora, vocab, args)
    del with_lora
    with_prefix = build(args.model)
    prefix_tuning.apply_prefix_tuning(
        with_prefix, prefix_tuning.PrefixTuningConfig(num_virtual_tokens=args.num_virtual_tokens)
    )
    cost["prefix_with_mlp"] = train_cost(with_prefix, vocab, args)
    memory = {k: v["optimizer_state_bytes"] for k, v in cost.items()}
    step_s = {k: v["step_s"] for k, v in cost.items()}

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
                "train_step_s": step_s,
                "train_step_ratio_to_full": {k: v / step_s["full"] for k, v in step_s.items()},
                "train_rows": [args.train_batch, args.train_len],
                "goals": {
                    "merged_lora_latency_ratio": {"value": ratio, "goal": "<= 1.02", "met": ratio <= 1.02}
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
