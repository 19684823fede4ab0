"""The ``papernotes`` command line: maps command names to library functions.

User mistakes (any :class:`papernotes.errors.PapernotesError`) print one red line
and exit with code 2; ``--debug`` shows the traceback instead. Heavy imports happen
inside the command functions so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from papernotes.errors import PapernotesError
from papernotes.geometry.cli import add_calib_commands
from papernotes.llm.cli import add_post_training_commands
from papernotes.video.cli import add_oad_commands, add_video_commands

EPILOG = """fields and their commands:
  reproduce          run every experiment on embedded data; writes reports/<run>/index.html
  llm train          pre-train a Llama on the embedded corpus (or --text-dir) with fp32/bf16/fp16
  llm generate       decode: plain, speculative, lookup, medusa or mtp
  llm train-medusa   train Medusa heads on a frozen model
  llm train-mtp      train multi-token-prediction modules
  llm export         turn a training run's checkpoint into a Hugging Face model directory
  llm finetune       full, LoRA or Prefix-Tuning fine-tuning on the table-to-text task
  llm sft            supervised fine-tuning on chat conversations (assistant tokens only, packed)
  llm rejection-sample  K samples per prompt, best verified reply kept, preference pairs written
  llm dpo            Direct Preference Optimization against a frozen reference
  llm chat           interactive terminal chat, streamed, lossless speculative decoding when available
  video make-synthetic  write the embedded, temporally sensitive video benchmark (mp4 + list files)
  video flow         TSN-style optical-flow images (flow_x/flow_y JPEGs) for a video list
  video train        train TSN, Two-Stream, TRN, TSM, TDN, TAM or a 3-D CNN on an mmaction list
  video eval         top-1/top-5, mean class accuracy and a confusion matrix for a checkpoint
  oad make-synthetic write embedded untrimmed feature streams in the THUMOS'14 layout
  oad train          train an online action detector (OadTR, TRN, IDN, TCN, per-frame MLP)
  oad eval           per-frame mAP and calibrated mAP of a detector on the test sessions
  seg eval           PA, MPA, mIoU, FWIoU, Dice of predicted vs ground-truth PNG label maps
  calib split        split four-way (mosaic) recorder frames into per-camera image folders
  calib intrinsics   one camera's K and distortion from chessboard images
  calib stereo       a synchronised pair's R, T, E, F and rectification
  calib rig          every camera's pose relative to a reference camera

run 'papernotes COMMAND --help' for a command's options and defaults."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papernotes",
        description="Paper notes made real: video understanding and efficient-LLM methods, "
        "each tested against a reference library and measured.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    # the same two flags after a command name (`papernotes reproduce --debug`); SUPPRESS keeps the
    # top-level value unless the flag is given there
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rep = sub.add_parser(
        "reproduce",
        parents=[common],
        help="run the experiments and write an HTML report",
        description="Run every registered experiment (or --only some) on embedded data, write "
        "<out>/<timestamp>/results.json and index.html, and print a summary table. Trained models are "
        "cached under --cache-dir and reused by later runs and experiments.",
        formatter_class=_Formatter,
    )
    rep.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments (see --list)")
    rep.add_argument("--size", choices=["quick", "full"], default="quick", help="quick: minutes; full: hours")
    rep.add_argument("--out", type=Path, default=Path("reports"), help="folder for report runs")
    rep.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="trained-model cache [$PAPERNOTES_CACHE or ~/.cache/papernotes]",
    )
    rep.add_argument("--no-cache", action="store_true", help="retrain instead of reusing cached models")
    rep.add_argument("--seed", type=int, default=0, help="base random seed")
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    rep.set_defaults(func=_reproduce)

    llm = sub.add_parser(
        "llm", parents=[common], help="Efficient LLMs: the Llama-3 core", formatter_class=_Formatter
    )
    llm_sub = llm.add_subparsers(dest="llm_command", metavar="COMMAND", required=True)

    tr = llm_sub.add_parser(
        "train",
        parents=[common],
        help="pre-train a Llama on the embedded corpus",
        description="Train a byte-level BPE tokenizer and a Llama on CPython's standard library "
        "(or --text-dir), with checkpoints, --resume and mixed precision. Writes <out>/checkpoint "
        "(resumable) and <out>/model (Hugging Face directory with tokenizer). Runs under torchrun for DDP.",
        formatter_class=_Formatter,
    )
    tr.add_argument("--out", type=Path, required=True, help="run folder")
    tr.add_argument(
        "--model",
        default="pn-small",
        help="Llama config preset: tiny, pn-small, pn-base, llama3.2-1b, llama3-8b",
    )
    tr.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="numeric mode")
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
        formatter_class=_Formatter,
    )
    gen.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory [the target model cached by 'papernotes reproduce']",
    )
    gen.add_argument(
        "--method",
        choices=["plain", "speculative", "lookup", "medusa", "mtp"],
        default="plain",
        help="decoding method; all but plain are lossless accelerations of it",
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
    gen.add_argument("--num-draft-tokens", type=int, default=4, help="γ for speculative and lookup")
    gen.add_argument("--stats", action="store_true", help="print τ, α and per-position acceptance too")
    gen.add_argument("--prompt", default="def ", help="text to continue")
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
            formatter_class=_Formatter,
        )
        head.add_argument("--model", type=Path, default=None, help="base model dir [the reproduce target]")
        head.add_argument("--out", type=Path, required=True, help="folder for the trained weights")
        head.add_argument("--steps", type=int, default=200, help="optimizer steps")
        head.add_argument("--batch-size", type=int, default=8, help="sequences per step")
        head.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
        head.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
        head.add_argument(
            "--precision", choices=["fp32", "bf16", "fp16"], default="bf16", help="numeric mode"
        )
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
        help="export a training checkpoint as a Hugging Face model directory",
        description="Read <run>/checkpoint from 'papernotes llm train' and write a directory that "
        "transformers.LlamaForCausalLM.from_pretrained and vLLM load: config.json, model.safetensors, "
        "tokenizer.json. Also converts an existing model directory to another dtype.",
        formatter_class=_Formatter,
    )
    ex.add_argument("--run", type=Path, required=True, help="'llm train' run folder, or a model directory")
    ex.add_argument("--out", type=Path, required=True, help="destination model directory")
    ex.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weight dtype"
    )
    ex.set_defaults(func=_llm_export)

    ft = llm_sub.add_parser(
        "finetune",
        parents=[common],
        help="fine-tune a model directory: full, LoRA or Prefix-Tuning",
        description="Fine-tune on a procedurally generated task (table2text: E2E-style restaurant records "
        "to sentences), then decode the test split greedily and report BLEU and slot error rate. Writes "
        "<out>/adapter (LoRA, peft layout), <out>/prefix (prefix tuning, peft layout) or <out>/model (full), "
        "plus <out>/result.json. Use the result with 'llm generate --adapter DIR' or peft.",
        formatter_class=_Formatter,
    )
    ft.add_argument("--method", choices=["full", "lora", "prefix"], default="lora", help="what trains")
    ft.add_argument(
        "--model",
        type=Path,
        default=None,
        help="base model dir [llm-peft's domain-adapted base if cached, else the reproduce target]",
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
    ft.add_argument("--steps", type=int, default=300, help="optimizer steps")
    ft.add_argument("--batch-size", type=int, default=16, help="examples per step")
    ft.add_argument(
        "--lr", type=float, default=None, help="peak learning rate [full 3e-3, lora 2e-2, prefix 5e-3]"
    )
    ft.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16", help="numeric mode")
    ft.add_argument("--eval-size", type=int, default=200, help="test examples decoded for the metrics")
    ft.add_argument("--seed", type=int, default=0, help="random seed (data and training)")
    ft.set_defaults(func=_llm_finetune)
    add_post_training_commands(llm_sub, common, _Formatter)
    add_video_commands(sub, common, _Formatter)
    add_oad_commands(sub, common, _Formatter)
    _add_seg_commands(sub, common)
    add_calib_commands(sub, common, _Formatter)
    return parser


def _add_seg_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    seg = sub.add_parser("seg", parents=[common], help="Segmentation metrics", formatter_class=_Formatter)
    seg_sub = seg.add_subparsers(dest="seg_command", metavar="COMMAND", required=True)
    ev = seg_sub.add_parser(
        "eval",
        parents=[common],
        help="PA, MPA, mIoU, FWIoU and Dice of PNG label maps",
        description="Pair predicted and ground-truth PNG label maps by file name, accumulate one confusion "
        "matrix over all pixels (ground-truth pixels at --ignore-index are dropped from both maps), and "
        "print "
        "per-class IoU / accuracy / Dice with PA, MPA, mIoU and FWIoU. With --out: metrics.json, iou.png and "
        "confusion.png.",
        formatter_class=_Formatter,
    )
    ev.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps (.png)")
    ev.add_argument("--gt", type=Path, required=True, help="folder of ground-truth label maps (.png)")
    ev.add_argument("--num-classes", type=int, required=True, help="number of classes C (labels 0..C-1)")
    ev.add_argument("--ignore-index", type=int, default=255, help="ground-truth label that is not scored")
    ev.add_argument("--class-names", type=Path, default=None, help="text file, one class name per line")
    ev.add_argument("--out", type=Path, default=None, help="folder for metrics.json and the figures")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.set_defaults(func=_seg_eval)


def _seg_eval(args: argparse.Namespace) -> int:
    from papernotes.metrics.segmentation_eval import eval_command, table

    print(table(eval_command(args)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except PapernotesError as exc:
        if args.debug:
            raise
        red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
        print(f"{red}error: {exc}{reset}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _reproduce(args: argparse.Namespace) -> int:
    from papernotes.core.experiments import run_experiments, select
    from papernotes.core.report import summary
    from papernotes.geometry.experiments import EXPERIMENTS as GEOMETRY_EXPERIMENTS
    from papernotes.llm.experiments.pretrain import EXPERIMENTS as LLM_EXPERIMENTS
    from papernotes.video.experiments.online_detection import EXPERIMENTS as ONLINE_EXPERIMENTS
    from papernotes.video.experiments.recognition import EXPERIMENTS as VIDEO_EXPERIMENTS

    experiments = [*LLM_EXPERIMENTS, *VIDEO_EXPERIMENTS, *ONLINE_EXPERIMENTS, *GEOMETRY_EXPERIMENTS]
    if args.list:
        for exp in experiments:
            print(f"{exp.name:28s} {exp.field:6s} {exp.description}")
        return 0
    logging.getLogger("papernotes").setLevel(logging.INFO)
    chosen = select(experiments, args.only)
    run_dir, results = run_experiments(
        chosen,
        args.out,
        size=args.size,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        seed=args.seed,
    )
    print(summary(results))
    print(f"\nreport: {run_dir / 'index.html'}")
    return 1 if any(e["status"] != "ok" for e in results["experiments"].values()) else 0


def _llm_train(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import train_command

    info = train_command(args)
    if not info:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(
        f"trained {info['steps']} steps: final train loss {info['train_loss']:.4f}, "
        f"val loss {info['val_loss']:.4f}, {info['tokens_per_s']:.0f} tokens/s"
    )
    print(f"model: {info['model_dir']}")
    return 0


def _llm_generate(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import generate_command

    text, stats = generate_command(args)
    print(text)
    print(
        f"[{args.method}: {stats.tokens} tokens in {stats.wall_s:.2f} s, {stats.tokens_per_s:.1f} tokens/s, "
        f"{stats.target_calls} target calls]",
        file=sys.stderr,
    )
    if args.stats:
        pairs = zip(stats.accepted_by_position, stats.proposed_by_position)
        by_position = " ".join(f"{a}/{p}" for a, p in pairs) or "-"
        print(
            f"[τ = {stats.tokens_per_call:.2f} tokens per target call; α = {stats.acceptance_rate:.2f} "
            f"({stats.accepted}/{stats.drafted} drafts accepted); by position: {by_position}]",
            file=sys.stderr,
        )
    return 0


def _llm_train_medusa(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import train_medusa_command

    info = train_medusa_command(args)
    print(f"Medusa heads: {info['out']} (top-1 accuracy per head: {info['top1']})")
    return 0


def _llm_train_mtp(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import train_mtp_command

    info = train_mtp_command(args)
    print(f"MTP modules: {info['out']} (greedy acceptance per depth: {info['acceptance']})")
    return 0


def _llm_export(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import export_command

    print(f"exported: {export_command(args)}")
    return 0


def _llm_finetune(args: argparse.Namespace) -> int:
    from papernotes.llm.commands import finetune_command

    info = finetune_command(args)
    print(
        f"{info['method']}: {info['trainable_parameters']:,} trainable parameters "
        f"({info['trainable_percent']:.3g} % of {info['base_parameters']:,}), "
        f"{info['step_s'] * 1000:.0f} ms/step; test BLEU {info['metrics']['bleu']:.1f}, "
        f"SER {100 * info['metrics']['ser']:.1f} %"
    )
    for row in info["samples"][:2]:
        print(f"  {row['source']}\n    -> {row['output']}")
    print(f"saved: {info['saved']}")
    return 0
