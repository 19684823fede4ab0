"""video train / eval end to end on the tiny benchmark, the batch adapter, evaluation and profiling."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from papernotes.cli import main
from papernotes.errors import CheckpointError
from papernotes.video.data.datasets import read_rawframe_list, write_rawframe_list
from papernotes.video.data.flow import extract_flow_list
from papernotes.video.models import build_recognizer
from papernotes.video.train import LoaderBatches, build_dataset, evaluate, load_recognizer, profile_recognizer

TRAIN = ["--steps", "2", "--batch-size", "4", "--num-segments", "2", "--size", "32", "--num-workers", "0"]


@pytest.fixture(scope="module")
def flow_dir(synthetic_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flow")
    for split in ("train", "test"):
        extract_flow_list(synthetic_dir / f"{split}.txt", out, progress=False)
    return out


def test_train_then_eval_writes_checkpoint_metrics_and_confusion(synthetic_dir, tmp_path, capsys):
    run = tmp_path / "tsm"
    argv = ["video", "train", "--model", "tsm", "--train-list", str(synthetic_dir / "train_rawframes.txt")]
    argv += [
        "--val-list",
        str(synthetic_dir / "val_rawframes.txt"),
        "--out",
        str(run),
        *TRAIN,
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "val top-1" in capsys.readouterr().out
    assert {p.name for p in run.iterdir()} == {"recognizer.json", "model.safetensors", "result.json"}
    result = json.loads((run / "result.json").read_text())
    assert result["num_skipped"] == 0
    # the validation summary is what eval recomputes from the saved checkpoint on the same list
    val_list = str(synthetic_dir / "val_rawframes.txt")
    argv = ["video", "eval", "--checkpoint", str(run), "--list", val_list, "--out", str(tmp_path / "val")]
    assert main([*argv, "--num-workers", "0", "--no-progress"]) == 0
    val = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert result["val"] == {k: val[k] for k in ("top1", "top5", "mean_class_accuracy", "num_samples")}
    # the video list (mp4 files) works as well as the rawframe list
    report = tmp_path / "report"
    argv = ["video", "eval", "--checkpoint", str(run), "--list", str(synthetic_dir / "test.txt"), "--out"]
    argv += [str(report), "--num-clips", "2", "--classes", str(synthetic_dir / "classes.json"), "--profile"]
    assert main([*argv, "--num-workers", "0", "--no-progress"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["num_samples"] == 16 and len(metrics["confusion"]) == 16
    # top-1 and mean class accuracy agree with the confusion matrix (rows: true class, columns: predicted)
    confusion = torch.tensor(metrics["confusion"], dtype=torch.float64)
    assert confusion.sum() == 16
    assert metrics["top1"] == pytest.approx((confusion.trace() / confusion.sum()).item())
    present = confusion.sum(1) > 0
    recall = confusion.diagonal()[present] / confusion.sum(1)[present]
    assert metrics["mean_class_accuracy"] == pytest.approx(recall.mean().item())
    # the profile is the checkpoint's: its parameters, and the FLOPs the counter gives at the evaluated size
    saved, _ = load_recognizer(run)
    assert metrics["profile"]["params"] == sum(p.numel() for p in saved.parameters())
    assert metrics["profile"]["flops"] == profile_recognizer(saved, 32, repeats=1, warmup=0)["flops"]
    assert (report / "confusion.png").stat().st_size > 1000
    # refuses to overwrite a run
    assert main(["video", "train", "--model", "tsm", "--train-list", argv[5], "--out", str(run), *TRAIN]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_two_stream_trains_and_evaluates_from_rgb_and_flow_lists(synthetic_dir, flow_dir, tmp_path):
    run = tmp_path / "two"
    argv = [
        "video",
        "train",
        "--model",
        "two-stream",
        "--train-list",
        str(synthetic_dir / "train_rawframes.txt"),
    ]
    argv += ["--flow-list", str(flow_dir / "train_flow.txt"), "--out", str(run), *TRAIN, "--no-progress"]
    assert main(argv) == 0
    argv = ["video", "eval", "--checkpoint", str(run), "--list", str(synthetic_dir / "test_rawframes.txt")]
    argv += ["--flow-list", str(flow_dir / "test_flow.txt"), "--num-workers", "0", "--no-progress"]
    assert main(argv) == 0


def test_training_skips_and_reports_a_missing_video_but_evaluation_raises(synthetic_dir, tmp_path, capsys):
    rows = [
        (str(e.path), e.num_frames, e.label)
        for e in read_rawframe_list(synthetic_dir / "train_rawframes.txt")
    ]
    rows.insert(3, (str(tmp_path / "gone"), 8, 0))
    broken = write_rawframe_list(tmp_path / "broken.txt", rows)
    argv = ["video", "train", "--model", "tsn", "--train-list", str(broken), "--out", str(tmp_path / "run")]
    assert main([*argv, *TRAIN[:-4], "--steps", "4", "--batch-size", "8", "--num-workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 entries" in out and str(tmp_path / "gone") in out
    assert json.loads((tmp_path / "run" / "result.json").read_text())["skipped"] == [str(tmp_path / "gone")]
    argv = [
        "video",
        "eval",
        "--checkpoint",
        str(tmp_path / "run"),
        "--list",
        str(broken),
        "--num-workers",
        "0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gone" in err and "broken.txt:4" in err
    # with --on-error skip the broken entry is left out, each video is scored once, and the skip is listed
    assert main([*argv[:-2], "--num-workers", "2", "--on-error", "skip", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_samples"] == 16 and metrics["skipped"] == [str(tmp_path / "gone")]


def test_bad_lists_and_checkpoints_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a 3 1 extra\n")
    assert (
        main(["video", "train", "--model", "tsn", "--train-list", str(bad), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "bad.txt:1" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a recognizer checkpoint"):
        load_recognizer(tmp_path)
    assert not (tmp_path / "o").exists()


def test_loader_batches_are_a_function_of_the_step(synthetic_dir):
    model = build_recognizer("tsn", 16, 2)
    data = build_dataset(model, synthetic_dir / "train_rawframes.txt", mode="test", size=32)
    fresh = LoaderBatches(data, 4, seed=3)
    batches = [fresh(step, 0) for step in range(5)]  # 20 rows: one epoch of 16, then the next epoch
    assert sorted(torch.cat([b["label"] for b in batches[:4]]).tolist()) == sorted(data.labels)
    resumed = LoaderBatches(data, 4, seed=3, start_step=3)
    for step in (3, 4):
        again = resumed(step, 0)
        assert torch.equal(again["label"], batches[step]["label"])
        assert torch.equal(again["frames"], batches[step]["frames"])


@torch.no_grad()
def test_multi_clip_evaluation_averages_the_clips(synthetic_dir):
    torch.manual_seed(0)
    model = build_recognizer("tsm", 16, 2).eval()
    two = build_dataset(model, synthetic_dir / "test_rawframes.txt", mode="test", size=32, num_clips=2)
    out = evaluate(model, two, batch_size=3, progress=False)
    item = two[5]
    clips = item["frames"].view(2, 2, *item["frames"].shape[1:])  # (V, K, C, H, W)
    torch.testing.assert_close(out["logits"][5], model(clips).mean(0), atol=1e-5, rtol=1e-5)
    assert out["labels"].tolist() == two.labels


def test_tsm_adds_no_flops_or_parameters_to_tsn():
    tsn, tsm = (build_recognizer(n, 16, 4) for n in ("tsn", "tsm"))
    a, b = profile_recognizer(tsn, 32, repeats=1), profile_recognizer(tsm, 32, repeats=1)
    assert a["flops"] == b["flops"] and a["params"] == b["params"] == sum(p.numel() for p in tsn.parameters())
    # TSN's FLOPs are K times one frame of the backbone plus the classifier
    with FlopCounterMode(display=False) as counter:
        tsn.backbone(torch.randn(1, 3, 32, 32))
    assert a["flops"] == 4 * (counter.get_total_flops() + 2 * tsn.fc.in_features * tsn.fc.out_features)
    tdn = profile_recognizer(build_recognizer("tdn", 16, 4), 32, repeats=1)
    assert tdn["flops"] > a["flops"]
