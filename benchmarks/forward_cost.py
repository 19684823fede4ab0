"""Benchmark: SmolLM2's forward cost before and after tuning the linear layers' matrix forms.

Claims under test (issue 17, part 0, "Make the forward cheap first"), SmolLM2-135M-Instruct in fp32,
batch 1, this CPU:
- plain decoding reaches ≥ 0.7 of the memory-read limit, the limit being the bandwidth measured here
  divided by the weight bytes one token reads;
- a forward of 5 new tokens (verification) costs ≤ 1.2× a forward of one, with a KV cache of a
  realistic prompt (128 tokens).

Everything is measured in one run on one model, interleaved: each round samples the bandwidth, then
times the untuned and the tuned model (``fast_linear`` plans removed / restored, alternating which
goes first), so that load from other jobs reaches both alike; medians over rounds are reported. The
tuning itself (``linear_tuning.tune_linears``) is read from its cache when present. Where the time
goes: the 211 linears run alone (one row each, in model order), a weightless twin (SmolLM2's layers
and heads at tiny widths: the per-step overhead without weight reads), and a per-op profile of one
tuned decode step. Everything is on the wall clock; with one thread, also on the thread's CPU clock
(``cpu_clock``), which is what the wall clock would read on an idle machine: on a shared one, time
spent waiting for a core is not on it. Prints ONE JSON object.

    python benchmarks/forward_cost.py --threads 1     # 5 rounds, 32 decoded tokens per round
    python benchmarks/forward_cost.py --rounds 9 --retune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from papernotes.llm.model.gguf import smollm2_gguf
from papernotes.llm.model.llama import Llama
from papernotes.nn.fast_linear import Linear, linear_plans, set_linear_plans
from papernotes.nn.kv_cache import KVCache
from papernotes.nn.linear_tuning import DEFAULT_ROWS, tune_linears

VARIANTS = ("untuned", "tuned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--prompt-len", type=int, default=128, help="tokens in the KV cache")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens decoded per round")
    parser.add_argument("--retune", action="store_true", help="measure the forms again (ignore the cache)")
    parser.add_argument("--profile-steps", type=int, default=10, help="decode steps in the per-op profile")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    return parser.parse_args(argv)


def weight_bytes_per_token(model: Llama) -> int:
    """Bytes of weights one decode step reads: every distinct parameter once, but only one row of an
    untied embedding (a tied one is read whole, as the head)."""
    embedding = model.model.embed_tokens.weight
    tied = model.lm_head.weight is embedding
    total = 0
    for p in model.parameters():  # parameters() yields a tied tensor once
        nbytes = p.numel() * p.element_size()
        total += nbytes if (p is not embedding or tied) else p.shape[1] * p.element_size()
    return total


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def forward_seconds(model: Llama, cache: KVCache, prompt_len: int, ids: torch.Tensor) -> tuple[float, float]:
    """(wall, CPU) seconds of a forward of ``ids`` (1, T) after a cache of ``prompt_len`` tokens."""
    cache.crop(prompt_len)
    return timed(lambda: model(ids, cache=cache))


def decode_seconds_per_token(model: Llama, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(wall, CPU) seconds per token of plain greedy decoding (``generate``'s loop: a forward and an
    argmax per token), prefill excluded."""
    cache = model.setup_cache(1, prompt.shape[1] + new_tokens)
    token = model(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (1, 1)

    def loop() -> None:
        nonlocal token
        for _ in range(new_tokens):
            token = model(token, cache=cache)[:, -1].argmax(-1, keepdim=True)

    wall, cpu = timed(loop)
    return wall / new_tokens, cpu / new_tokens


def linears_alone_seconds(model: Llama) -> tuple[float, float]:
    """(wall, CPU) seconds of one decode step's linear layers alone (one row each, in model order)."""
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    inputs = [torch.randn(1, 1, m.in_features) for m in layers]

    def run() -> None:
        for m, x in zip(layers, inputs, strict=True):
            m(x)

    return timed(run)


def weightless_twin(model: Llama) -> Llama:
    """A Llama with SmolLM2's layers, heads and control flow but tiny widths: its decode step is the
    per-step overhead (Python, dispatch, norms, RoPE, cache writes, attention) without weight reads."""
    widths = {"hidden_size": 8 * model.config.num_attention_heads, "intermediate_size": 64, "head_dim": 8}
    config = dataclasses.replace(model.config, vocab_size=64, **widths)
    torch.manual_seed(0)
    return Llama(config).eval()


def step_profile(model: Llama, cache: KVCache, prompt_len: int, steps: int, top: int = 14) -> list[dict]:
    """Self CPU time per op of one decode step (mean over ``steps``), largest first."""
    token = torch.tensor([[42]])
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # kineto's start/stop chatter on stderr
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            cache.crop(prompt_len)
            model(token, cache=cache)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    table = [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in rows[:top]
    ]
    rest = sum(e.self_cpu_time_total for e in rows[top:])
    table.append({"op": "(other ops)", "ms_per_step": rest / 1e3 / steps, "share": rest / total})
    return table


def summarize(
    samples: dict[str, dict[str, list[float]]], bandwidth: list[float], per_token: int, rows: tuple[int, ...]
) -> dict:
    """The claims from one clock's samples: medians over rounds, ratios, goals."""
    med = {v: {k: statistics.median(s) for k, s in samples[v].items()} for v in VARIANTS}
    bw = statistics.median(bandwidth)
    limit = bw / per_token  # tokens/s if a step cost only one read of its weights
    decode = {v: 1.0 / med[v]["decode"] for v in VARIANTS}
    fraction = {v: decode[v] / limit for v in VARIANTS}
    forward_ms = {v: {t: 1e3 * med[v][f"forward_{t}"] for t in rows} for v in VARIANTS}
    relative = {v: {t: forward_ms[v][t] / forward_ms[v][1] for t in rows} for v in VARIANTS}
    verify5 = relative["tuned"][5]
    return {
        "bandwidth_GB_per_s": bw / 1e9,
        "memory_limit_tokens_per_s": limit,
        "memory_limit_ms_per_token": 1e3 / limit,
        "decode_tokens_per_s": decode,
        "decode_ms_per_token": {v: 1e3 / decode[v] for v in VARIANTS},
        "decode_fraction_of_limit": fraction,
        "decode_speedup_tuned_over_untuned": decode["tuned"] / decode["untuned"],
        "forward_ms": forward_ms,
        "forward_cost_relative_to_one_token": relative,
        "linears_alone_ms_per_step": {v: 1e3 * med[v]["linears_alone"] for v in VARIANTS},
        "weightless_step_ms": 1e3 * med["tuned"]["weightless_step"],
        "goals": {
            "decode_fraction_of_memory_limit": {
                "value": fraction["tuned"],
                "goal": ">= 0.7",
                "met": fraction["tuned"] >= 0.7,
            },
            "verify_5_over_1": {"value": verify5, "goal": "<= 1.2", "met": verify5 <= 1.2},
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model = Llama.from_pretrained(smollm2_gguf()).eval()
    twin = weightless_twin(model)
    rows = DEFAULT_ROWS
    report = tune_linears(model, rows=rows, use_cache=not args.retune)
    plans = {"tuned": linear_plans(model), "untuned": dict.fromkeys(linear_plans(model))}

    per_token = weight_bytes_per_token(model)
    buffer = torch.ones(per_token // 4)  # a read of as many bytes as one token's weights
    vocab = model.config.vocab_size

    def token_ids(count: int, seed: int) -> torch.Tensor:
        return torch.randint(0, vocab, (1, count), generator=torch.Generator().manual_seed(seed))  # (1, T)

    prompt = token_ids(args.prompt_len, 0)
    new = {t: token_ids(t, t) for t in rows}
    caches = {}
    # clock -> variant -> measurement -> samples (one per round); the CPU clock is this thread's
    samples = {clock: {v: {} for v in VARIANTS} for clock in ("wall", "cpu")}
    bandwidth: dict[str, list[float]] = {"wall": [], "cpu": []}

    def record(variant: str, name: str, seconds: tuple[float, float]) -> None:
        for clock, value in zip(("wall", "cpu"), seconds, strict=True):
            samples[clock][variant].setdefault(name, []).append(value)

    def read_bandwidth() -> None:
        for clock, value in zip(("wall", "cpu"), timed(buffer.sum), strict=True):
            bandwidth[clock].append(buffer.numel() * 4 / value)

    with torch.inference_mode():
        twin_cache = twin.setup_cache(1, args.prompt_len + 1)
        twin(prompt % twin.config.vocab_size, cache=twin_cache)
        for variant in VARIANTS:  # warm-up: first calls allocate and create kernels; one cache each
            set_linear_plans(model, plans[variant])
            caches[variant] = model.setup_cache(1, args.prompt_len + max(rows))
            model(prompt, cache=caches[variant])
            for t in rows:
                forward_seconds(model, caches[variant], args.prompt_len, new[t])
            decode_seconds_per_token(model, prompt, 4)
        buffer.sum()
        for r in range(args.rounds):
            read_bandwidth()
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                set_linear_plans(model, plans[variant])
                cache = caches[variant]
                for t in rows:
                    record(variant, f"forward_{t}", forward_seconds(model, cache, args.prompt_len, new[t]))
                record(variant, "decode", decode_seconds_per_token(model, prompt, args.new_tokens))
                record(variant, "linears_alone", linears_alone_seconds(model))
            # the twin has no linear worth tuning: one sample per round, filed with the tuned model's
            twin_step = forward_seconds(twin, twin_cache, args.prompt_len, new[1] % twin.config.vocab_size)
            record("tuned", "weightless_step", twin_step)
            read_bandwidth()
        set_linear_plans(model, plans["tuned"])
        profile_table = step_profile(model, caches["tuned"], args.prompt_len, args.profile_steps)

    result = {
        "benchmark": "forward_cost",
        "model": "SmolLM2-135M-Instruct, fp32, batch 1",
        "threads": torch.get_num_threads(),
        "load_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "settings": {"rounds": args.rounds, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens},
        "weight_bytes_per_token": per_token,
        "bandwidth_GB_per_s_samples": [b / 1e9 for b in bandwidth["wall"]],
        "wall_clock": summarize(samples["wall"], bandwidth["wall"], per_token, rows),
        "tuning": {
            "seconds": report.seconds,
            "read_from_cache": all(s.cached for s in report.shapes),
            "load_when_tuned": report.load,
            "extra_bytes": report.extra_bytes,
            "extra_fraction_of_weights": report.extra_bytes / report.weight_bytes,
            "choices": {
                f"{s.out_features}x{s.in_features}": {
                    "modules": len(s.modules),
                    "forms": s.forms,
                    "column_major": s.column_major,
                    "extra_bytes": s.extra_bytes,
                    "speedup_over_f_linear": {m: s.speedup(m) for m in s.forms},
                    "us": {m: {f: 1e6 * t for f, t in times.items()} for m, times in s.seconds.items()},
                }
                for s in report.shapes
            },
        },
        "decode_step_profile_tuned": profile_table,
    }
    if torch.get_num_threads() == 1:
        # one thread: its CPU time is what the wall clock would read on an idle machine (time spent
        # waiting for a core that other jobs hold is not on it), so the claims are given on both clocks
        result["cpu_clock"] = summarize(samples["cpu"], bandwidth["cpu"], per_token, rows)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
