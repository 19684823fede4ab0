"""What the ``papernotes oad ...`` commands do, given their parsed arguments (the CLI maps names here)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from papernotes.core.checkpoint import atomic_write_dir, atomic_write_file, load_weights, save_weights
from papernotes.errors import CheckpointError, ConfigError
from papernotes.video.online.detectors import build_detector

DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "model.safetensors"


def make_synthetic_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes oad make-synthetic``: write the embedded streams in the THUMOS feature layout."""
    from papernotes.video.online.synthetic_streams import PRESETS, write_synthetic_streams

    cfg = dataclasses.replace(PRESETS[args.preset], seed=args.seed)
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists and is not empty; pass --overwrite to replace it")
    info = write_synthetic_streams(args.out, cfg)
    return {
        "out": str(args.out),
        "classes": len(info.class_names),
        "train": len(info.train_session_set),
        "test": len(info.test_session_set),
        "feature_dim": cfg.feature_dim,
    }


def save_detector(model: torch.nn.Module, name: str, out: Path, extra: dict[str, Any]) -> None:
    with atomic_write_dir(out) as tmp:
        meta = {"name": name, "config": dataclasses.asdict(model.cfg)}
        (tmp / DETECTOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_weights(tmp / WEIGHTS_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        for file, content in extra.items():
            (tmp / file).write_text(json.dumps(content, indent=2) + "\n")


def load_detector(checkpoint: Path) -> tuple[torch.nn.Module, str]:
    meta_file, weights = checkpoint / DETECTOR_FILE, checkpoint / WEIGHTS_FILE
    if not meta_file.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{checkpoint} is not a detector checkpoint: expected {DETECTOR_FILE} and {WEIGHTS_FILE} "
            "(written by papernotes oad train)"
        )
    meta = json.loads(meta_file.read_text())
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    model = build_detector(meta["name"], **config)
    state = load_weights(weights)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state or state[key].shape != tensor.shape:
            got = tuple(state[key].shape) if key in state else "missing"
            raise CheckpointError(
                f"{weights}: tensor {key} is {got}, the {meta['name']} model needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state)
    return model.eval(), meta["name"]


def _evaluate(model: torch.nn.Module, root: Path) -> dict[str, Any]:
    from papernotes.metrics.online_detection import calibrated_map, per_frame_map
    from papernotes.video.online.features import load_sessions
    from papernotes.video.online.train import score_sessions

    sessions, info = load_sessions(root, "test")
    _check_dims(model, sessions[0].features.shape[1], len(info.class_names), root)
    scores, targets = score_sessions(model, [s.features for s in sessions], [s.targets for s in sessions])
    frame = per_frame_map(scores, targets, ignore_index=info.ignore_index, class_names=info.class_names)
    calibrated = calibrated_map(scores, targets, ignore_index=info.ignore_index, class_names=info.class_names)
    return {
        "mAP": frame["mAP"],
        "mcAP": calibrated["mcAP"],
        "per_class_ap": frame["per_class_ap"],
        "skipped_classes": frame["skipped_classes"],
        "num_frames": frame["num_frames"],
        "sessions": len(sessions),
    }


def _check_dims(model: torch.nn.Module, feature_dim: int, num_classes: int, root: Path) -> None:
    if model.cfg.feature_dim != feature_dim or model.cfg.num_classes != num_classes:
        raise ConfigError(
            f"{root}: features have {feature_dim} dimensions and {num_classes} classes, the model expects "
            f"{model.cfg.feature_dim} and {model.cfg.num_classes}"
        )


def train_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes oad train``: train a detector on a feature root's train sessions, save it to ``--out``."""
    from papernotes.core.train import short_run, train
    from papernotes.video.online.features import load_sessions
    from papernotes.video.online.train import ChunkBatches, detector_loss, labels_of

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists and is not empty; pass --overwrite to replace it")
    sessions, info = load_sessions(args.data, "train")
    torch.manual_seed(args.seed)
    model = build_detector(
        args.model, args.preset, feature_dim=sessions[0].features.shape[1], num_classes=len(info.class_names)
    )
    batches = ChunkBatches(
        [s.features for s in sessions],
        [labels_of(s.targets, info.ignore_index) for s in sessions],
        args.chunk,
        args.batch_size,
        args.seed,
    )
    cfg = short_run(args.steps, args.batch_size, args.lr, seed=args.seed, progress=not args.no_progress)
    result = train(model, detector_loss, batches, cfg)
    summary: dict[str, Any] = {
        "model": args.model,
        "steps": args.steps,
        "final_train_loss": sum(result.train_losses[-10:]) / max(len(result.train_losses[-10:]), 1),
        "train_s": result.wall_s,
    }
    if args.eval:
        summary["test"] = _evaluate(model.eval(), args.data)
    save_detector(model, args.model, args.out, {"result.json": summary})
    summary["out"] = str(args.out)
    return summary


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes oad eval``: THUMOS'14 per-frame mAP and TVSeries mcAP on the test sessions."""
    model, _ = load_detector(args.checkpoint)
    summary = _evaluate(model, args.data)
    if args.out is not None:
        with atomic_write_file(args.out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
