"""The embedded benchmark: order-sensitive pairs differ only in order; splits deterministic; writes atomic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from papernotes.errors import ConfigError
from papernotes.video.commands import make_synthetic_command
from papernotes.video.data import synthetic
from papernotes.video.data.datasets import read_rawframe_list, read_video_list
from papernotes.video.data.flow import BOUND, compute_flow, extract_flow_list, read_flow
from papernotes.video.data.synthetic import CLASSES, ORDER_SENSITIVE, PAIRS, make_synthetic, render_clip
from papernotes.video.data.video_io import read_video


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_the_second_class_of_a_pair_is_the_first_played_backwards(first, second):
    for seed in (0, 1):
        forward = render_clip(first, seed, size=32, num_frames=12)
        backward = render_clip(second, seed, size=32, num_frames=12)
        assert np.array_equal(backward, forward[::-1])
        # so, without their order, the frames of the two classes are the same set
        assert sorted(f.tobytes() for f in forward) == sorted(f.tobytes() for f in backward)
    assert not np.array_equal(forward, forward[::-1])  # and the order does matter


def _centroids(class_id: int, seed: int) -> np.ndarray:
    """Foreground centre of mass (T, 2) as (x, y), from the class's process (before any reversal)."""
    alpha, _ = CLASSES[class_id].process(np.random.default_rng(seed), 64, 16)  # (T, S, S)
    yy, xx = np.mgrid[0:64, 0:64]
    mass = alpha.sum(axis=(1, 2))
    return np.stack([(alpha * xx).sum(axis=(1, 2)) / mass, (alpha * yy).sum(axis=(1, 2)) / mass], axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_the_processes_move_the_way_their_names_say(seed):
    left = _centroids(0, seed)
    assert left[-1, 0] - left[0, 0] < -10  # travels left by at least 10 px at S = 64
    up = _centroids(2, seed)
    assert up[-1, 1] - up[0, 1] < -10
    grow, _ = CLASSES[6].process(np.random.default_rng(seed), 64, 16)
    assert grow[-1].sum() > 3 * grow[0].sum()
    fade, _ = CLASSES[8].process(np.random.default_rng(seed), 64, 16)
    assert fade[0].sum() < 0.7 * fade[-1].sum()
    assert not CLASSES[0].reverse and CLASSES[1].reverse  # move_right = move_left backwards


def test_appearance_classes_do_not_depend_on_order():
    assert set(ORDER_SENSITIVE) == set(range(12)) and len(CLASSES) == 16
    for class_id in range(12, 16):
        assert CLASSES[class_id].opposite is None and not CLASSES[class_id].reverse


def test_dataset_layout_lists_and_classes_json(synthetic_dir):
    table = json.loads((synthetic_dir / "classes.json").read_text())
    assert table["order_sensitive"] == list(range(12))
    assert table["pairs"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert [c["name"] for c in table["classes"]][:2] == ["move_left", "move_right"]
    assert table["splits"] == {"train": 16, "val": 16, "test": 16} and table["params"]["size"] == 32
    seen = set()
    for split in ("train", "val", "test"):
        videos = read_video_list(synthetic_dir / f"{split}.txt")
        frames = read_rawframe_list(synthetic_dir / f"{split}_rawframes.txt")
        assert sorted(e.label for e in videos) == list(range(16))
        assert [e.path.parts[-2:] for e in frames] == [(e.path.parts[-2], e.path.stem) for e in videos]
        assert all(e.num_frames == 8 for e in frames)
        seen |= {e.path for e in videos}
    assert len(seen) == 48
    clip = read_video(next(iter(seen)))
    assert clip.shape == (8, 32, 32, 3)


def test_generation_is_deterministic_and_independent_of_workers(synthetic_dir, tiny_params, tmp_path):
    summary = make_synthetic(tmp_path / "again", workers=2, **tiny_params)
    assert summary["reused"] is False and summary["splits"]["val"] == 16
    for name in ("classes.json", "train.txt", "val.txt", "test_rawframes.txt"):
        assert (tmp_path / "again" / name).read_text() == (synthetic_dir / name).read_text()
    frame = "rawframes/approach/approach_0001/img_00005.jpg"
    assert (tmp_path / "again" / frame).read_bytes() == (synthetic_dir / frame).read_bytes()
    video = "videos/recede/recede_0002.mp4"
    assert np.array_equal(read_video(tmp_path / "again" / video), read_video(synthetic_dir / video))


def test_an_existing_folder_is_reused_or_refused(synthetic_dir, tiny_params):
    assert make_synthetic(synthetic_dir, **tiny_params)["reused"] is True
    with pytest.raises(ConfigError, match="already exists"):
        make_synthetic(synthetic_dir, **{**tiny_params, "seed": 1})


def test_an_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = synthetic.write_video
    monkeypatch.setattr(synthetic, "write_video", failing_write)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path / "data", clips_per_class=2, size=32, num_frames=4)
    assert list(tmp_path.iterdir()) == []


def test_make_synthetic_command_without_rawframes(tmp_path):
    args = argparse.Namespace(
        out=tmp_path / "bench",
        clips=None,
        clips_per_class=1,
        seed=3,
        size=16,
        num_frames=4,
        no_rawframes=True,
        flow=False,
        overwrite=False,
        workers=1,
    )
    summary = make_synthetic_command(args)
    assert summary["num_classes"] == 16 and summary["splits"] == {"train": 16, "val": 0, "test": 0}
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == [
        "classes.json",
        "test.txt",
        "train.txt",
        "val.txt",
        "videos",
    ]
    with pytest.raises(ConfigError, match="even"):
        make_synthetic(tmp_path / "odd", size=33)


@pytest.fixture(scope="module")
def with_flow(tmp_path_factory, tiny_params):
    """The tiny benchmark with videos, rawframes and the flow written with the clips."""
    out = tmp_path_factory.mktemp("synthetic_flow") / "data"
    make_synthetic(out, write_flow=True, **tiny_params)
    return out


def test_flow_written_with_the_clips_is_laid_out_as_extraction_and_comes_from_the_rendered_frames(
    synthetic_dir, with_flow, tiny_params, tmp_path
):
    out = with_flow
    for name in ("train.txt", "test_rawframes.txt"):  # the same clips as without flow
        assert (out / name).read_text() == (synthetic_dir / name).read_text()
    for split in ("train", "test"):  # the lists that extract_flow_list writes for the video lists
        summary = extract_flow_list(out / f"{split}.txt", tmp_path / "extracted", progress=False)
        assert (out / "flow" / f"{split}_flow.txt").read_text() == Path(summary["flow_list"]).read_text()
    entry = next(e for e in read_rawframe_list(out / "flow" / "train_flow.txt") if e.label == 0)
    clip = int(entry.path.name.rsplit("_", 1)[1])  # move_left_0002 -> 2; class 0 is its own pair base
    frames = render_clip(0, np.random.default_rng([tiny_params["seed"], 0, clip]), 32, 8)
    expected = compute_flow(frames)  # (7, 32, 32, 2), from the frames before video compression
    written = read_flow(entry.path, range(entry.num_frames))  # (7, 32, 32, 2) after uint8 + JPEG
    assert entry.num_frames == 7 and written.shape == expected.shape
    error = np.abs(written - np.clip(expected, -BOUND, BOUND))
    assert error.mean() < 0.1 and error.max() < 1.0, (error.mean(), error.max())


def test_frames_and_flow_without_videos(with_flow, tmp_path, tiny_params):
    with_videos, without = with_flow, tmp_path / "without"
    make_synthetic(without, write_flow=True, write_videos=False, **tiny_params)
    assert not (without / "videos").exists() and not (without / "train.txt").exists()
    flow_image = "flow/videos/recede/recede_0001/flow_y_00003.jpg"
    for name in ("train_rawframes.txt", "flow/test_flow.txt", flow_image):
        assert (without / name).read_bytes() == (with_videos / name).read_bytes()
    with pytest.raises(ConfigError, match="nothing to write"):
        make_synthetic(tmp_path / "none", write_videos=False, write_rawframes=False, **tiny_params)
    assert not (tmp_path / "none").exists()


def test_a_folder_from_before_the_flow_and_video_options_is_reused(tmp_path, tiny_params):
    out = tmp_path / "old"
    make_synthetic(out, **tiny_params)
    table = json.loads((out / "classes.json").read_text())
    for key in ("write_flow", "write_videos"):  # what an older version wrote
        del table["params"][key]
    (out / "classes.json").write_text(json.dumps(table))
    assert make_synthetic(out, **tiny_params)["reused"] is True
    with pytest.raises(ConfigError, match="already exists"):
        make_synthetic(out, write_flow=True, **tiny_params)
