"""What the ``papernotes oad ...`` commands do, given their parsed arguments (the CLI maps names here)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from papernotes.core.checkpoint import (
    check_state_dict,
    load_weights,
    refuse_non_empty,
    save_weights,
)
from papernotes.core.files import atomic_write_dir, atomic_write_file
from papernotes.errors import CheckpointError, ConfigError
from papernotes.video.online.models import build_detector

DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "model.safetensors"


def make_synthetic_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes oad make-synthetic``: write the embedded streams in the THUMOS feature layout."""
    from papernotes.video.online.data.synthetic_streams import PRESETS, write_synthetic_streams

    cfg = dataclasses.replace(PRESETS[args.preset], seed=args.seed)
    refuse_non_empty(args.out, args.overwrite)
    info = write_synthetic_streams(args.out, cfg)
    return {
        "out": str(args.out),
        "classes": len(info.class_names),
        "train": len(info.train_session_set),
        "test": len(info.test_session_set),
        "feature_dim": cfg.feature_dim,
    }


def save_detector(
    model: torch.nn.Module, name: str, out: Path, extra: dict[str, Any], class_names: list[str] | None = None
) -> None:
    with atomic_write_dir(out) as tmp:
        meta = {"name": name, "config": dataclasses.asdict(model.cfg), "class_names": class_names}
        (tmp / DETECTOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_weights(tmp / WEIGHTS_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        for file, content in extra.items():
            (tmp / file).write_text(json.dumps(content, indent=2) + "\n")


def load_detector(checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
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
    check_state_dict(model.state_dict(), state, weights, f"a {meta['name']} detector")
    model.load_state_dict(state)
    return model.eval(), meta


def _evaluate(model: torch.nn.Module, root: Path) -> dict[str, Any]:
    from papernotes.metrics.online_detection import calibrated_map, per_frame_map
    from papernotes.video.online.data.features import load_sessions
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
    from papernotes.video.online.data.features import load_sessions
    from papernotes.video.online.train import ChunkBatches, detector_loss, labels_of

    refuse_non_empty(args.out, args.overwrite)
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
        "final_train_loss": result.final_loss,
        "train_s": result.wall_s,
    }
    if args.eval:
        summary["test"] = _evaluate(model.eval(), args.data)
    save_detector(model, args.model, args.out, {"result.json": summary}, class_names=info.class_names)
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


def extract_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes oad extract``: chunk features (T, D) of each video, one ``<stem>.npy`` per video."""
    import numpy as np

    from papernotes.video.online.data.extract import ChunkFeatureExtractor, ExtractConfig

    extractor = ChunkFeatureExtractor(ExtractConfig(args.backbone, args.pretrained, args.size, args.fps))
    written = {}
    for video in args.video:
        features = extractor.extract(video)
        with atomic_write_file(args.out / f"{video.stem}.npy") as tmp, tmp.open("wb") as handle:
            np.save(handle, features)
        written[str(video)] = list(features.shape)
    return {"out": str(args.out), "features": written, "fps": args.fps, "backbone": args.backbone}


def stream_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes oad stream``: features on the fly, the detector's scores step by step, a timeline."""
    from papernotes.video.online.data.extract import ChunkFeatureExtractor, ExtractConfig

    model, meta = load_detector(args.checkpoint)
    extractor = ChunkFeatureExtractor(ExtractConfig(args.backbone, args.pretrained, args.size, args.fps))
    if extractor.dim != model.cfg.feature_dim:
        raise ConfigError(
            f"the {args.backbone} extractor gives {extractor.dim}-dim features, the detector in "
            f"{args.checkpoint} expects {model.cfg.feature_dim}: train it on features from the same "
            "extractor (papernotes oad extract)"
        )
    names = meta.get("class_names") or [str(i) for i in range(model.cfg.num_classes)]
    stream = model.stream()
    times, probabilities = [], []
    for seconds, feature in extractor.chunks(args.video):
        probabilities.append(torch.softmax(stream.step(feature), dim=-1))
        times.append(seconds)
    probs = torch.stack(probabilities)  # (T, C+1)
    rows = [
        {"t": round(t, 3), "class": names[int(p.argmax())], "p": round(float(p.max()), 4)}
        for t, p in zip(times, probs)
    ]
    summary: dict[str, Any] = {"video": str(args.video), "steps": len(rows), "frames": rows}
    if args.out is not None:
        summary["figure"] = str(plot_timeline(times, probs, names, args.out, title=args.video.name))
    return summary


def plot_timeline(
    times: list[float], probs: torch.Tensor, names: list[str], path: Path, title: str = ""
) -> Path:
    """Per-class probability over time (the classes that ever reach 0.2), written atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    shown = [c for c in range(probs.shape[1]) if probs[:, c].max() >= 0.2] or [int(probs.mean(0).argmax())]
    for c in shown:
        ax.plot(times, probs[:, c].numpy(), label=names[c])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(f"online action probabilities: {title}")
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    with atomic_write_file(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    return path
