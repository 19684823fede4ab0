"""What the ``papernotes video ...`` data commands do, given their parsed arguments.

Kept apart from :mod:`papernotes.cli` so that the CLI only maps names to these functions and tests can call
them directly. Each returns a JSON-serialisable summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from papernotes.core.checkpoint import refuse_non_empty
from papernotes.errors import ConfigError, DataError
from papernotes.video.data.flow import extract_flow_list
from papernotes.video.data.synthetic import make_synthetic
from papernotes.video.train import list_format


def make_synthetic_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes video make-synthetic``: write the embedded benchmark (videos, rawframes, list files)."""
    from papernotes.video.data.synthetic import CLASSES

    # --clips N: the total, spread evenly (rounded up) over the classes
    per_class = -(-args.clips // len(CLASSES)) if args.clips is not None else args.clips_per_class
    if per_class < 1:
        given = args.clips if args.clips is not None else args.clips_per_class
        raise ConfigError(f"--clips/--clips-per-class must be >= 1, got {given}")
    return make_synthetic(
        args.out,
        clips_per_class=per_class,
        seed=args.seed,
        size=args.size,
        num_frames=args.num_frames,
        write_rawframes=not args.no_rawframes,
        write_flow=args.flow,
        overwrite=args.overwrite,
        workers=args.workers,
    )


def flow_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes video flow``: TSN-style flow images for every video of an mmaction video list."""
    return extract_flow_list(
        args.list,
        args.out,
        root=args.root,
        workers=args.workers,
        method=args.method,
        bound=args.bound,
        max_frames=args.max_frames,
        write_rgb=args.rgb,
        on_error=args.on_error,
        progress=not args.no_progress,
    )


def _num_classes(list_file: Path, given: int | None) -> int:
    """--num-classes, or the largest label of the training list plus one."""
    if given is not None:
        if given < 2:
            raise ConfigError(f"--num-classes must be >= 2, got {given}")
        return given
    labels = [int(line.split()[-1]) for line in Path(list_file).read_text().splitlines() if line.split()]
    return max(labels) + 1


def class_names(path: Path | None, num_classes: int) -> list[str]:
    """Names from a classes.json (``papernotes video make-synthetic``) or a text file, one per line."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    if not path.is_file():
        raise DataError(f"--classes {path}: no such file")
    if path.suffix == ".json":
        names = [c["name"] for c in json.loads(path.read_text())["classes"]]
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DataError(f"--classes {path}: {len(names)} names for a model of {num_classes} classes")
    return names


def train_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes video train``: train a recognizer with ``core.train`` and save it to ``--out``."""
    from papernotes.core.train import short_run, train
    from papernotes.metrics.classification import classification_summary
    from papernotes.video.models import build_recognizer
    from papernotes.video.train import (
        LoaderBatches,
        build_dataset,
        evaluate,
        recognizer_loss,
        save_recognizer,
    )

    refuse_non_empty(args.out, args.overwrite)
    list_format(args.train_list)  # a clear error for a missing or malformed list before building anything
    num_classes = _num_classes(args.train_list, args.num_classes)
    torch.manual_seed(args.seed)
    model = build_recognizer(
        args.model, num_classes, args.num_segments, args.backbone, pretrained=args.pretrained
    )
    data = {"size": args.size, "root": args.root, "flip": args.flip}
    train_set = build_dataset(
        model, args.train_list, mode="train", on_error=args.on_error, flow_list=args.flow_list, **data
    )
    batches = LoaderBatches(train_set, args.batch_size, seed=args.seed, num_workers=args.num_workers)
    cfg = short_run(
        args.steps,
        args.batch_size,
        args.lr,
        weight_decay=args.weight_decay,
        precision=args.precision,
        seed=args.seed,
        progress=not args.no_progress,
    )
    result = train(model, recognizer_loss, batches, cfg)
    summary: dict[str, Any] = {
        "model": args.model,
        "steps": args.steps,
        "final_train_loss": result.final_loss,
        "train_s": result.wall_s,
        "skipped": batches.skipped,
        "num_skipped": len(batches.skipped),
    }
    if args.val_list is not None:
        val_set = build_dataset(
            model, args.val_list, mode="test", on_error="raise", flow_list=args.val_flow_list, **data
        )
        out = evaluate(model, val_set, num_workers=args.num_workers, progress=not args.no_progress)
        val = classification_summary(out["logits"], out["labels"], num_classes)
        summary["val"] = {k: v for k, v in val.items() if k != "confusion"}
    meta = {
        "name": args.model,
        "num_classes": num_classes,
        "num_segments": args.num_segments,
        "backbone": args.backbone,
        "size": args.size,
    }
    save_recognizer(model, meta, args.out, extra={"result.json": summary})
    summary["out"] = str(args.out)
    return summary


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes video eval``: top-1/top-5, mean class accuracy and a confusion-matrix figure."""
    from papernotes.core.files import atomic_write_file
    from papernotes.metrics.classification import classification_summary, plot_confusion
    from papernotes.video.train import build_dataset, evaluate, load_recognizer, profile_recognizer

    model, meta = load_recognizer(args.checkpoint)
    size = args.size or meta.get("size", 112)
    names = class_names(args.classes, meta["num_classes"])
    dataset = build_dataset(
        model,
        args.list,
        mode="test",
        size=size,
        num_clips=args.num_clips,
        on_error=args.on_error,
        root=args.root,
        flow_list=args.flow_list,
    )
    out = evaluate(model, dataset, args.batch_size, args.num_workers, progress=not args.no_progress)
    summary = classification_summary(out["logits"], out["labels"], meta["num_classes"])
    summary["skipped"] = out["skipped"]
    summary["checkpoint"] = str(args.checkpoint)
    summary["num_clips"] = args.num_clips
    if args.profile:  # parameters, FLOPs and CPU latency of one clip at the evaluated size
        summary["profile"] = profile_recognizer(model, size)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with atomic_write_file(args.out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        plot_confusion(torch.tensor(summary["confusion"]), names, args.out / "confusion.png")
        summary["out"] = str(args.out)
    return summary
