"""The ``video-recognition`` experiment: every recognizer on the embedded, temporally sensitive benchmark.

The claim under test (TSM, TDN, TAM, TRN papers): on data whose classes differ in temporal order, models that
see order beat TSN's order-free average by a wide margin (SSv1: TSN 19.7 vs TSM 45.6 top-1), and 2-D
temporal modules get there without the cost of 3-D convolutions.

All models train with the same backbone (ResNet-18 from scratch: no weights are downloaded), data,
schedule, step budget and seed, through ``core.train``; the test split is scored with the centre clip.
Reported per model: top-1 overall, top-1 on the order-sensitive classes (0-11: each pair differs only in
time direction; an order-blind model is at chance *within* a pair), parameters, forward FLOPs per clip
(``torch.utils.flop_counter``) and median CPU latency per clip. TSM's latency overhead over TSN is timed
again with the two models interleaved, because these machines are noisy.

Budget: the default (quick) size is small enough for about 4 minutes on 2 cores, which leaves every model
under-trained; ``--size full`` trains for longer on more clips. The numbers are measured, never assumed.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from papernotes.core.cache import recipe_key
from papernotes.core.experiments import ExperimentContext, ExperimentResult, Table
from papernotes.core.train import short_run, train
from papernotes.metrics.classification import classification_summary, plot_confusion
from papernotes.video.data.flow import extract_flow_list
from papernotes.video.data.synthetic import make_synthetic
from papernotes.video.models import build_recognizer
from papernotes.video.train import (
    LoaderBatches,
    build_dataset,
    evaluate,
    example_input,
    load_recognizer,
    profile_recognizer,
    recognizer_loss,
    save_recognizer,
)

logger = logging.getLogger(__name__)

TEMPORAL = ("trn", "tsm", "tdn", "tam")
VIDEO_SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "clips_per_class": 60,  # 16 classes: 576 train / 192 val / 192 test clips
        "frame_size": 32,
        "num_frames": 16,
        "num_segments": 4,
        "steps": 80,
        "batch_size": 16,
        "lr": 1e-3,
        "models": ["tsn", "two-stream", "trn", "tsm", "tdn", "tam", "r2plus1d"],
        "latency_repeats": 10,
    },
    "full": {
        "clips_per_class": 150,
        "frame_size": 32,
        "num_frames": 16,
        "num_segments": 4,
        "steps": 600,
        "batch_size": 16,
        "lr": 1e-3,
        "models": ["tsn", "two-stream", "trn", "tsm", "tdn", "tam", "dilated", "r3d", "r2plus1d"],
        "latency_repeats": 20,
    },
    "tiny": {  # for tests: seconds, not a measurement
        "clips_per_class": 3,
        "frame_size": 32,
        "num_frames": 8,
        "num_segments": 2,
        "steps": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "models": ["tsn", "two-stream", "tsm"],
        "latency_repeats": 2,
    },
}


def _dataset(ctx: ExperimentContext, size: dict[str, Any]) -> Path:
    """The benchmark with rawframes and TSN flow, generated once into the cache."""
    data_settings = {k: size[k] for k in ("clips_per_class", "frame_size", "num_frames")} | {"seed": ctx.seed}
    root = ctx.cache_dir / "video" / f"synthetic-{recipe_key(data_settings)}"
    if not (root / "classes.json").is_file():
        logger.info("video-recognition: generating the benchmark into %s", root)
        make_synthetic(
            root,
            clips_per_class=size["clips_per_class"],
            seed=ctx.seed,
            size=size["frame_size"],
            num_frames=size["num_frames"],
            overwrite=True,
            workers=2,
        )
    for split in ("train", "test"):
        if not (root / "flow" / f"{split}_flow.txt").is_file():
            logger.info("video-recognition: optical flow (DIS) for the %s split", split)
            extract_flow_list(root / f"{split}.txt", root / "flow", workers=2, progress=False)
    return root


def _train_one(
    name: str, root: Path, size: dict[str, Any], ctx: ExperimentContext, num_classes: int, recipe: str
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``name`` (or load it from the cache when the recipe matches)."""
    run_dir = ctx.cache_dir / "video" / f"recognition-{recipe}" / name
    info_file = run_dir / "train.json"
    if ctx.use_cache and info_file.is_file():
        model, _ = load_recognizer(run_dir)
        return model, json.loads(info_file.read_text())
    torch.manual_seed(ctx.seed)
    model = build_recognizer(name, num_classes, size["num_segments"])
    dataset = build_dataset(
        model,
        root / "train_rawframes.txt",
        mode="train",
        size=size["frame_size"],
        flow_list=root / "flow" / "train_flow.txt",
        on_error="skip",
    )
    batches = LoaderBatches(dataset, size["batch_size"], seed=ctx.seed)
    cfg = short_run(size["steps"], size["batch_size"], size["lr"], weight_decay=1e-4, seed=ctx.seed)
    result = train(model, recognizer_loss, batches, cfg)
    info = {
        "train_s": result.wall_s,
        "step_s": result.wall_s / max(size["steps"], 1),
        "final_loss": result.final_loss,
        "skipped": batches.skipped,
    }
    meta = {
        "name": name,
        "num_classes": num_classes,
        "num_segments": size["num_segments"],
        "backbone": "resnet18",
    }
    save_recognizer(model, meta, run_dir, extra={"train.json": info})
    return model, info


def _interleaved_latency(a: torch.nn.Module, b: torch.nn.Module, frame_size: int, rounds: int) -> float:
    """median latency of b / median latency of a, timed alternately in this process."""
    a.eval(), b.eval()
    x = example_input(a, frame_size)
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.no_grad():
        for model in (a, b):  # warm-up
            model(x)
        for _ in range(rounds):
            for i, model in enumerate((a, b)):
                start = time.perf_counter()
                model(x)
                times[i].append(time.perf_counter() - start)
    return statistics.median(times[1]) / statistics.median(times[0])


def run_video_recognition(ctx: ExperimentContext) -> ExperimentResult:
    size = VIDEO_SIZES[ctx.size]
    root = _dataset(ctx, size)
    classes = json.loads((root / "classes.json").read_text())
    names = [c["name"] for c in classes["classes"]]
    order_sensitive = torch.tensor([c["order_sensitive"] for c in classes["classes"]])
    recipe = recipe_key({**size, "seed": ctx.seed, "data": root.name})
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    figures: list[str] = []
    for name in size["models"]:
        logger.info("video-recognition: %s", name)
        model, info = _train_one(name, root, size, ctx, len(names), recipe)
        test = build_dataset(
            model,
            root / "test_rawframes.txt",
            mode="test",
            size=size["frame_size"],
            flow_list=root / "flow" / "test_flow.txt",
        )
        out = evaluate(model, test, progress=False)
        summary = classification_summary(out["logits"], out["labels"], len(names))
        chosen = order_sensitive[out["labels"]]
        correct = out["logits"].argmax(-1) == out["labels"]
        profile = profile_recognizer(model, size["frame_size"], repeats=size["latency_repeats"])
        rows.append(
            {
                "model": name,
                "top1": summary["top1"],
                "top5": summary.get("top5"),
                "order_top1": correct[chosen].float().mean().item(),
                "appearance_top1": correct[~chosen].float().mean().item(),
                "mean_class_accuracy": summary["mean_class_accuracy"],
                **profile,
                **{k: v for k, v in info.items() if k != "skipped"},
                "skipped": len(info["skipped"]),
            }
        )
        models[name] = model
        if name in ("tsn", "tsm"):
            path = ctx.out_dir / f"confusion_{name}.png"
            plot_confusion(torch.tensor(summary["confusion"]), names, path, title=f"{name} (test split)")
            figures.append(path.name)
    by_name = {r["model"]: r for r in rows}
    tsn = by_name.get("tsn")
    for row in rows:
        row["order_top1_vs_tsn"] = (
            row["order_top1"] / tsn["order_top1"] if tsn and tsn["order_top1"] else None
        )
        row["flops_vs_tsn"] = row["flops"] / tsn["flops"] if tsn else None
    latency_ratio = None
    if "tsn" in models and "tsm" in models:
        latency_ratio = _interleaved_latency(
            models["tsn"], models["tsm"], size["frame_size"], 3 * size["latency_repeats"]
        )
    figures.insert(0, _plot(rows, ctx.out_dir / "video_recognition.png").name)
    goals = _goals(by_name, latency_ratio)
    table = Table(
        "recognizers on the embedded benchmark (same backbone, data, schedule and steps)",
        [
            "model",
            "top-1 %",
            "order-sensitive top-1 %",
            "× TSN (order)",
            "appearance top-1 %",
            "params M",
            "GFLOPs/clip",
            "latency ms/clip",
            "train s",
        ],
        [
            [
                r["model"],
                100 * r["top1"],
                100 * r["order_top1"],
                r["order_top1_vs_tsn"],
                100 * r["appearance_top1"],
                r["params"] / 1e6,
                r["flops"] / 1e9,
                r["latency_ms"],
                r["train_s"],
            ]
            for r in rows
        ],
    )
    notes = [
        f"{size['clips_per_class']} clips per class ({len(names)} classes, 60/20/20 split), "
        f"{size['frame_size']} px frames, K = {size['num_segments']} segments; ResNet-18 from scratch, "
        f"{size['steps']} AdamW steps of {size['batch_size']} clips, lr {size['lr']}; test: 1 centre clip",
        "chance: 6.25 % overall; an order-blind model can reach at most 50 % on the order-sensitive classes",
        *goals,
    ]
    skipped = sum(r["skipped"] for r in rows)
    if skipped:
        notes.append(f"{skipped} training entries could not be loaded and were skipped")
    return ExperimentResult(
        metrics={"runs": rows, "tsm_latency_vs_tsn": latency_ratio, "settings": size},
        tables=[table],
        figures=figures,
        notes=notes,
    )


def _goals(by_name: dict[str, dict[str, Any]], latency_ratio: float | None) -> list[str]:
    """The papers' claims, each marked met or missed from this run's numbers."""
    lines = []
    tsn, tsm = by_name.get("tsn"), by_name.get("tsm")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if tsn and tsm:
        lines.append(
            f"goal TSM FLOPs = TSN FLOPs: {tsm['flops']} vs {tsn['flops']} "
            f"({verdict(tsm['flops'] == tsn['flops'])})"
        )
    if latency_ratio is not None:
        overhead = 100 * (latency_ratio - 1)
        lines.append(
            f"goal TSM latency overhead <= 5 %: {overhead:+.1f} % interleaved ({verdict(overhead <= 5)})"
        )
    if tsn:
        for name in TEMPORAL:
            if name in by_name:
                row = by_name[name]
                ratio = row["order_top1"] / tsn["order_top1"] if tsn["order_top1"] else float("inf")
                lines.append(
                    f"goal {name} >= 2x TSN on order-sensitive classes: {100 * row['order_top1']:.1f} % vs "
                    f"{100 * tsn['order_top1']:.1f} % = {ratio:.2f}x ({verdict(ratio >= 2)})"
                )
        if "two-stream" in by_name:
            two = by_name["two-stream"]
            lines.append(
                f"goal Two-Stream > RGB TSN top-1: {100 * two['top1']:.1f} % vs {100 * tsn['top1']:.1f} % "
                f"({verdict(two['top1'] > tsn['top1'])})"
            )
    return lines


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bars: top-1 overall and on the order-sensitive classes; GFLOPs per clip."""
    fig = Figure(figsize=(11, 4))
    ax_acc, ax_cost = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    names = [r["model"] for r in rows]
    x = torch.arange(len(rows)).float()
    ax_acc.bar(x - 0.2, [100 * r["top1"] for r in rows], 0.4, label="all classes")
    ax_acc.bar(x + 0.2, [100 * r["order_top1"] for r in rows], 0.4, label="order-sensitive classes")
    ax_acc.axhline(100 / 16, color="grey", linestyle=":", linewidth=1, label="chance")
    ax_acc.set_xticks(x.tolist(), names, rotation=20)
    ax_acc.set_ylabel("test top-1 %")
    ax_acc.legend(fontsize=8)
    ax_acc.set_title("accuracy")
    ax_cost.bar(x.tolist(), [r["flops"] / 1e9 for r in rows], color="tab:gray")
    ax_cost.set_xticks(x.tolist(), names, rotation=40, ha="right")
    ax_cost.set_ylabel("GFLOPs per clip")
    ax_cost.set_title("cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
