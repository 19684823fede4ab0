"""``papernotes llm sft | rejection-sample | dpo | chat``: argparse and the terminal side (logic in
``llm.post_training_commands`` and ``llm.chat``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_post_training_commands(
    llm_sub: argparse._SubParsersAction, common: argparse.ArgumentParser, formatter
) -> None:
    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", type=Path, default=None, help="HF Llama directory [the reproduce target]")
        p.add_argument("--train-size", type=int, default=4000, help="embedded instruction examples to draw")
        p.add_argument("--eval-size", type=int, default=140, help="embedded test examples to score")
        p.add_argument("--seed", type=int, default=0, help="random seed (data, sampling and training)")

    st = llm_sub.add_parser(
        "sft",
        parents=[common],
        help="supervised fine-tuning on chat conversations (assistant tokens only, packed)",
        description="Fine-tune on the embedded instruction tasks (or --data JSONL of {'messages': [...]}) in "
        "the Llama 3 chat format, the loss on assistant tokens only, rows packed. Adds the chat tokens if "
        "the model lacks them. Writes <out>/model (HF directory with the chat template), <out>/adapter with "
        "--lora, and <out>/result.json with the test accuracy.",
        formatter_class=formatter,
    )
    data_args(st)
    st.add_argument("--out", type=Path, required=True, help="output folder")
    st.add_argument(
        "--data", type=Path, default=None, help="JSONL conversations instead of the embedded tasks"
    )
    st.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into <out>/model)")
    st.add_argument("--r", type=int, default=16, help="LoRA rank")
    st.add_argument("--steps", type=int, default=500, help="optimizer steps")
    st.add_argument("--batch-size", type=int, default=8, help="packed rows per step")
    st.add_argument("--max-length", type=int, default=256, help="tokens per packed row")
    st.add_argument("--lr", type=float, default=None, help="peak learning rate [full 1e-3, lora 1e-2]")
    st.set_defaults(func=_sft)

    rs = llm_sub.add_parser(
        "rejection-sample",
        parents=[common],
        help="K samples per prompt, keep the best verified one, write SFT data and preference pairs",
        description="Sample --k replies per embedded training prompt, score them with the task verifiers, "
        "keep the shortest correct reply (ties: most likely) and pair correct with incorrect replies (the "
        "reference answer stands in where no sample is correct). Writes <out>/sft.jsonl and "
        "<out>/pairs.jsonl.",
        formatter_class=formatter,
    )
    data_args(rs)
    rs.add_argument("--out", type=Path, required=True, help="output folder")
    rs.add_argument("--k", type=int, default=8, help="samples per prompt")
    rs.add_argument("--prompts", type=int, default=200, help="training prompts to sample")
    rs.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    rs.add_argument("--max-new-tokens", type=int, default=48, help="reply budget")
    rs.set_defaults(func=_rejection_sample)

    dp = llm_sub.add_parser(
        "dpo",
        parents=[common],
        help="Direct Preference Optimization against a frozen reference (Llama 3's NLL-regularised DPO)",
        description="Train --model on (chosen, rejected) pairs (--pairs JSONL, or sampled from --ref on the "
        "embedded prompts) with -log σ(β·margin) + α·NLL(chosen), formatting tokens masked, the reference's "
        "log-probabilities computed once. Writes <out>/model and <out>/result.json.",
        formatter_class=formatter,
    )
    data_args(dp)
    dp.add_argument("--ref", type=Path, required=True, help="the frozen reference model directory")
    dp.add_argument("--out", type=Path, required=True, help="output folder")
    dp.add_argument("--pairs", type=Path, default=None, help="JSONL pairs (from 'llm rejection-sample')")
    dp.add_argument("--k", type=int, default=4, help="samples per prompt when pairs are sampled")
    dp.add_argument("--prompts", type=int, default=200, help="prompts to sample pairs from")
    dp.add_argument("--beta", type=float, default=0.1, help="DPO temperature β")
    dp.add_argument("--alpha", type=float, default=0.2, help="weight of the NLL term on chosen replies")
    dp.add_argument("--steps", type=int, default=100, help="optimizer steps")
    dp.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    dp.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    dp.set_defaults(func=_dpo)

    ch = llm_sub.add_parser(
        "chat",
        parents=[common],
        help="interactive chat in the terminal, replies streamed",
        description="Chat with a model in the Llama 3 template; replies stream as they decode. Commands: "
        "/reset (start over), /stats (turns, tokens, speed, method), /exit. A draft model, Medusa heads or "
        "MTP modules beside the model (draft/, medusa/, mtp/) are used for lossless faster decoding. An "
        "input longer than the context drops the oldest turns first, and says so.",
        formatter_class=formatter,
    )
    ch.add_argument("--model", type=Path, default=None, help="HF Llama directory [the reproduce target]")
    ch.add_argument("--system", default=None, help="system message")
    ch.add_argument("--max-new-tokens", type=int, default=128, help="reply budget")
    ch.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ch.add_argument(
        "--method",
        choices=["auto", "plain", "speculative", "medusa", "mtp"],
        default="auto",
        help="decoding: auto uses an accelerator found beside the model",
    )
    ch.add_argument("--num-draft-tokens", type=int, default=4, help="draft tokens per step (speculative)")
    ch.add_argument("--seed", type=int, default=0, help="sampling seed")
    ch.set_defaults(func=_chat)


def _sft(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import sft_command

    info = sft_command(args)
    scores = info["scores"]
    print(
        f"{info['method']} SFT: final loss {info['train_losses'][-1]:.4f}; test accuracy "
        f"{100 * scores['accuracy']:.1f} % (unseen phrasings {100 * scores['unseen_accuracy']:.1f} %)"
    )
    print(f"model: {info['model']}")
    return 0


def _rejection_sample(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import rejection_sample_command

    info = rejection_sample_command(args)
    print(
        f"{info['prompts']} prompts x {args.k} samples: pass@k {info['pass_at_k']:.2f}, sample accuracy "
        f"{info['sample_accuracy']:.2f}; kept {info['kept']}, {info['pairs']} pairs -> {info['out']}"
    )
    return 0


def _dpo(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import dpo_command

    info = dpo_command(args)
    print(
        f"DPO on {info['pairs']} pairs: preference accuracy {100 * info['preference_accuracy_before']:.1f} % "
        f"-> {100 * info['preference_accuracy_after']:.1f} %"
    )
    print(f"model: {info['model']}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import chat_session

    session = chat_session(args)
    interactive = sys.stdin.isatty()
    print(f"chat ({session.method} decoding, context {session.context} tokens); /reset, /stats, /exit")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            session.reset()
            print("[conversation reset]")
            continue
        if text.strip() == "/stats":
            s = session.stats
            print(
                f"[{s.turns} turns, {s.tokens} tokens, {s.tokens_per_s:.1f} tokens/s, {s.target_calls} model "
                f"calls, {session.method} decoding, {len(session.messages)} messages kept, "
                f"{s.truncations} truncations]"
            )
            continue
        pieces = session.reply(text)
        first = next(pieces, "")
        for notice in session.notices:
            print(f"[{notice}]")
        print(first, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    return 0
