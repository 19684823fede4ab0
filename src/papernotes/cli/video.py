"""``papernotes video ...`` and ``papernotes oad ...``: recognition and online detection commands.

The logic is in ``video/commands.py`` and ``video/online/commands.py``; this module maps arguments to those
functions and prints their summaries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from papernotes.cli.common import PRECISION_HELP, PRECISIONS, Formatter, echo, echo_json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    _register_video(sub, common)
    _register_oad(sub, common)


def _register_video(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The ``papernotes video ...`` commands."""
    video = sub.add_parser(
        "video",
        parents=[common],
        help="Video understanding: data, flow, recognizers",
        formatter_class=Formatter,
    )
    video_sub = video.add_subparsers(dest="video_command", metavar="COMMAND", required=True)

    syn = video_sub.add_parser(
        "make-synthetic",
        parents=[common],
        help="write the embedded video benchmark",
        description="Generate the temporally sensitive benchmark as real .mp4 files (and img_00001.jpg "
        "rawframe folders) with mmaction list files train/val/test.txt and classes.json. 16 classes: six "
        "pairs that differ only in temporal order or direction (left/right, up/down, "
        "a pointer turning clockwise/anticlockwise, approach/recede, appear/disappear, ring-then-cross/"
        "cross-then-ring) and four "
        "recognisable from one frame. Deterministic from --seed.",
        formatter_class=Formatter,
    )
    syn.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    count = syn.add_mutually_exclusive_group()
    count.add_argument(
        "--clips", type=int, default=None, help="total clips, spread evenly over the 16 classes"
    )
    count.add_argument(
        "--clips-per-class", type=int, default=40, help="clips per class (split 60/20/20 train/val/test)"
    )
    syn.add_argument("--seed", type=int, default=0, help="same seed and sizes give identical data")
    syn.add_argument("--size", type=int, default=64, help="frame height and width in pixels (even)")
    syn.add_argument("--num-frames", type=int, default=32, help="frames per clip")
    syn.add_argument("--no-rawframes", action="store_true", help="write only .mp4 files, no frame folders")
    syn.add_argument(
        "--flow",
        action="store_true",
        help="also write TSN flow images (DIS) of the rendered frames into flow/, with the lists "
        "flow/{split}_flow.txt, laid out as 'papernotes video flow' writes them",
    )
    syn.add_argument("--overwrite", action="store_true", help="replace a folder made with other settings")
    syn.add_argument("--workers", type=int, default=2, help="processes that write classes in parallel")
    syn.set_defaults(func=_video_make_synthetic)

    fl = video_sub.add_parser(
        "flow",
        parents=[common],
        help="extract TSN-style optical flow for a video list",
        description="Compute optical flow with OpenCV for every video of an mmaction list ('path label' "
        "per line) and store it as TSN does: x and y as uint8 JPEGs, clipped to +-bound and mapped to 0-255 "
        "(flow_x_00001.jpg, flow_y_00001.jpg). Resumable: finished videos are skipped. Writes "
        "<out>/<list>_flow.txt, a rawframe list for the flow stream.",
        formatter_class=Formatter,
    )
    fl.add_argument("--list", type=Path, required=True, help="mmaction video list ('path label' per line)")
    fl.add_argument(
        "--out", type=Path, required=True, help="folder for the flow images, one folder per video"
    )
    fl.add_argument(
        "--root", type=Path, default=None, help="where relative list paths start [the list's folder]"
    )
    fl.add_argument("--workers", type=int, default=1, help="parallel processes")
    fl.add_argument(
        "--method",
        choices=["dis", "farneback", "tvl1"],
        default="dis",
        help="OpenCV flow estimator (tvl1 needs opencv-contrib)",
    )
    fl.add_argument("--bound", type=float, default=20.0, help="flow clip value in pixels (TSN: 20)")
    fl.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of each video")
    fl.add_argument("--rgb", action="store_true", help="also write img_00001.jpg frames for the RGB stream")
    fl.add_argument(
        "--on-error", choices=["raise", "skip"], default="raise", help="what to do with an undecodable video"
    )
    fl.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fl.set_defaults(func=_video_flow)

    # the names of video.models.CONSTRUCTORS, spelled out so that --help needs no torch import
    models = ["tsn", "two-stream", "trn", "tsm", "tdn", "tam", "tam-signed", "dilated", "r3d", "r2plus1d"]
    tr = video_sub.add_parser(
        "train",
        parents=[common],
        help="train a recognizer (TSN, Two-Stream, TRN, TSM, TDN, TAM, R3D, R(2+1)D)",
        description="Train a video recognizer on an mmaction list through the shared training loop (AdamW, "
        "warmup + cosine, optional bf16). A rawframe list ('dir num_frames label') or a video list "
        "('path label') is detected from its first line. TSN sampling: K segments, a random offset in each "
        "when training. Entries that fail to load are skipped (--on-error skip) and reported at the end. "
        "Writes <out>/recognizer.json, model.safetensors and result.json atomically. Example: papernotes "
        "video train --model tsm --train-list data/train_rawframes.txt --val-list data/val_rawframes.txt "
        "--num-segments 8 --out runs/tsm",
        formatter_class=Formatter,
    )
    tr.add_argument("--model", choices=models, required=True, help="recognizer to build")
    tr.add_argument("--train-list", type=Path, required=True, help="mmaction rawframe or video list")
    tr.add_argument("--val-list", type=Path, default=None, help="list scored after training (centre clip)")
    tr.add_argument(
        "--flow-list", type=Path, default=None, help="two-stream: rawframe list of flow folders (video flow)"
    )
    tr.add_argument("--val-flow-list", type=Path, default=None, help="two-stream: flow list of --val-list")
    tr.add_argument(
        "--root", type=Path, default=None, help="where relative list paths start [the list's folder]"
    )
    tr.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    tr.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    tr.add_argument("--num-segments", type=int, default=8, help="K: segments (frames) per clip")
    tr.add_argument("--backbone", choices=["resnet18", "resnet50"], default="resnet18", help="2-D backbone")
    tr.add_argument(
        "--pretrained", type=Path, default=None, help="local ImageNet/Kinetics weights (.pth or .safetensors)"
    )
    tr.add_argument("--num-classes", type=int, default=None, help="[largest training label + 1]")
    tr.add_argument("--size", type=int, default=112, help="crop size in pixels (ImageNet models: 224)")
    tr.add_argument("--flip", action="store_true", help="random horizontal flip (swaps left and right!)")
    tr.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    tr.add_argument("--batch-size", type=int, default=8, help="clips per step")
    tr.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    tr.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW decoupled weight decay")
    tr.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    tr.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    tr.add_argument(
        "--on-error", choices=["skip", "raise"], default="skip", help="a corrupt, empty or missing video"
    )
    tr.add_argument("--seed", type=int, default=0, help="seeds weights, sampling and augmentation")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.set_defaults(func=_video_train)

    ev = video_sub.add_parser(
        "eval",
        parents=[common],
        help="top-1/top-5, mean class accuracy and a confusion matrix",
        description="Score a checkpoint written by 'papernotes video train' on a list. Multi-clip testing "
        "averages the logits of --num-clips evenly spaced clips per video. Writes <out>/metrics.json and "
        "<out>/confusion.png when --out is given. A video that fails to load is an error unless "
        "--on-error skip.",
        formatter_class=Formatter,
    )
    ev.add_argument("--checkpoint", type=Path, required=True, help="folder written by video train")
    ev.add_argument("--list", type=Path, required=True, help="mmaction rawframe or video list to score")
    ev.add_argument("--flow-list", type=Path, default=None, help="two-stream: flow list of --list")
    ev.add_argument(
        "--root", type=Path, default=None, help="where relative list paths start [the list's folder]"
    )
    ev.add_argument("--num-clips", type=int, default=1, help="test clips per video (TSN: 25 for 1 segment)")
    ev.add_argument("--size", type=int, default=None, help="crop size [the training size]")
    ev.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    ev.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    ev.add_argument(
        "--on-error", choices=["raise", "skip"], default="raise", help="a video that fails to load"
    )
    ev.add_argument("--classes", type=Path, default=None, help="classes.json or a text file of class names")
    ev.add_argument("--out", type=Path, default=None, help="folder for metrics.json and confusion.png")
    ev.add_argument(
        "--profile", action="store_true", help="also report parameters, FLOPs and CPU latency per clip"
    )
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.set_defaults(func=_video_eval)


def _register_oad(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The ``papernotes oad ...`` commands."""
    oad = sub.add_parser(
        "oad", parents=[common], help="Online action detection on feature streams", formatter_class=Formatter
    )
    oad_sub = oad.add_subparsers(dest="oad_command", metavar="COMMAND", required=True)
    syn = oad_sub.add_parser(
        "make-synthetic",
        parents=[common],
        help="write the embedded feature streams (THUMOS layout)",
        description="Generate untrimmed feature sessions in the THUMOS'14/TVSeries layout (data_info.json, "
        "features/<session>.npy, target_perframe/<session>.npy). 20 actions in pairs that differ only in "
        "their direction of motion, background, and ambiguous frames at action boundaries.",
        formatter_class=Formatter,
    )
    syn.add_argument("--out", type=Path, required=True, help="feature root to create")
    syn.add_argument("--preset", choices=["default", "tiny"], default="default", help="stream settings")
    syn.add_argument("--seed", type=int, default=0, help="same seed, same streams")
    syn.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    syn.set_defaults(func=_oad_make_synthetic)

    tr = oad_sub.add_parser(
        "train",
        parents=[common],
        help="train an online detector (oadtr, trn, idn, tcn, mlp)",
        description="Train a detector on the train sessions of a feature root (THUMOS'14 layout: "
        "data_info.json, <rgb_dir>/<session>.npy, optional <flow_dir>, target_perframe/<session>.npy) on "
        "random chunks of --chunk frames, through the shared training loop. Writes <out>/detector.json, "
        "model.safetensors and result.json atomically; --eval also scores the test sessions.",
        formatter_class=Formatter,
    )
    tr.add_argument("--model", choices=["oadtr", "trn", "idn", "tcn", "mlp"], required=True, help="detector")
    tr.add_argument("--data", type=Path, required=True, help="feature root with data_info.json")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    tr.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    tr.add_argument(
        "--preset", choices=["default", "tiny"], default="default", help="model size (default: the paper's)"
    )
    tr.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    tr.add_argument("--batch-size", type=int, default=16, help="chunks per step")
    tr.add_argument("--chunk", type=int, default=64, help="frames per training chunk")
    tr.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    tr.add_argument("--seed", type=int, default=0, help="seeds weights and chunk sampling")
    tr.add_argument("--eval", action="store_true", help="score the test sessions after training")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.set_defaults(func=_oad_train)

    ev = oad_sub.add_parser(
        "eval",
        parents=[common],
        help="per-frame mAP (THUMOS'14) and mcAP (TVSeries) of a checkpoint",
        description="Score the test sessions of a feature root with a checkpoint from 'oad train': per-frame "
        "mAP (ambiguous frames dropped, background left out, classes without positives skipped), calibrated "
        "mAP, and per-class AP.",
        formatter_class=Formatter,
    )
    ev.add_argument("--checkpoint", type=Path, required=True, help="folder written by oad train")
    ev.add_argument("--data", type=Path, required=True, help="feature root with data_info.json")
    ev.add_argument("--out", type=Path, default=None, help="write the metrics to this JSON file")
    ev.set_defaults(func=_oad_eval)

    for command, text in (
        ("extract", "chunk features of videos with a 2-D backbone"),
        ("stream", "detect actions in a video frame by frame and plot a timeline"),
    ):
        parser = oad_sub.add_parser(
            command,
            parents=[common],
            help=text,
            description={
                "extract": "Decode each video, cut it by timestamp into chunks of 1 / --fps seconds (exactly "
                "--fps features per second, whatever the video's frame rate) and write the mean ResNet "
                "feature of each chunk: <out>/<video stem>.npy, shape (T, D). D is 512 for "
                "resnet18 and 2048 for resnet50. Use --pretrained for local ImageNet weights.",
                "stream": "Extract chunk features on the fly and feed them one at a time to a detector's "
                "stream (exactly its offline scores). Prints the top class per step as JSON and, with --out, "
                "plots the class probabilities over time. The detector must have been trained on features "
                "of the same extractor.",
            }[command],
            formatter_class=Formatter,
        )
        if command == "extract":
            parser.add_argument("--video", type=Path, nargs="+", required=True, help="video files")
            parser.add_argument("--out", type=Path, required=True, help="folder for the .npy features")
        else:
            parser.add_argument("--checkpoint", type=Path, required=True, help="folder written by oad train")
            parser.add_argument("--video", type=Path, required=True, help="video file")
            parser.add_argument("--out", type=Path, default=None, help="timeline figure (.png)")
        parser.add_argument(
            "--backbone", choices=["resnet18", "resnet50"], default="resnet18", help="2-D CNN"
        )
        parser.add_argument("--pretrained", type=Path, default=None, help="local ImageNet weights")
        parser.add_argument("--size", type=int, default=112, help="frame crop size")
        parser.add_argument("--fps", type=float, default=4.0, help="features per second")
        parser.set_defaults(func=_oad_extract if command == "extract" else _oad_stream)


def _oad_train(args: argparse.Namespace) -> int:
    from papernotes.video.online.commands import train_command

    info = train_command(args)
    echo(
        f"trained {info['model']} for {info['steps']} steps: final train loss {info['final_train_loss']:.4f}"
    )
    if "test" in info:
        echo(f"test mAP {100 * info['test']['mAP']:.2f} %, mcAP {100 * info['test']['mcAP']:.2f} %")
    echo(f"checkpoint: {info['out']}")
    return 0


def _video_train(args: argparse.Namespace) -> int:
    from papernotes.video.commands import train_command

    info = train_command(args)
    echo(
        f"trained {info['model']} for {info['steps']} steps: final train loss {info['final_train_loss']:.4f}"
    )
    if "val" in info:
        echo(
            f"val top-1 {100 * info['val']['top1']:.2f} %, mean class accuracy "
            f"{100 * info['val']['mean_class_accuracy']:.2f} %"
        )
    if info["num_skipped"]:
        echo(f"skipped {info['num_skipped']} entries that could not be loaded:", *info["skipped"], sep="\n  ")
    echo(f"checkpoint: {info['out']}")
    return 0


def _video_eval(args: argparse.Namespace) -> int:
    from papernotes.video.commands import eval_command

    info = eval_command(args)
    return echo_json({k: v for k, v in info.items() if k != "confusion"})


def _video_make_synthetic(args: argparse.Namespace) -> int:
    from papernotes.video.commands import make_synthetic_command

    return echo_json(make_synthetic_command(args))


def _video_flow(args: argparse.Namespace) -> int:
    from papernotes.video.commands import flow_command

    return echo_json(flow_command(args))


def _oad_make_synthetic(args: argparse.Namespace) -> int:
    from papernotes.video.online.commands import make_synthetic_command

    return echo_json(make_synthetic_command(args))


def _oad_extract(args: argparse.Namespace) -> int:
    from papernotes.video.online.commands import extract_command

    return echo_json(extract_command(args))


def _oad_stream(args: argparse.Namespace) -> int:
    from papernotes.video.online.commands import stream_command

    return echo_json(stream_command(args))


def _oad_eval(args: argparse.Namespace) -> int:
    from papernotes.video.online.commands import eval_command

    return echo_json(eval_command(args))
