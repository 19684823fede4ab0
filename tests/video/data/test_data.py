"""TSN sampling, list files, datasets (on the tiny synthetic benchmark) and clip transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from papernotes.errors import ConfigError, DataError
from papernotes.video.data import transforms as T
from papernotes.video.data.datasets import (
    RawFrameDataset,
    VideoDataset,
    read_rawframe_list,
    read_video_list,
    sample_indices,
)
from papernotes.video.data.video_io import FLOW_TEMPLATE, write_frames

# ------------------------------------------------------------------------------------------------ sampling


def test_train_offsets_lie_inside_their_segments():
    num_frames, k = 100, 8
    segment = num_frames / k
    rng = np.random.default_rng(0)
    draws = np.concatenate([sample_indices(num_frames, k, mode="train", rng=rng) for _ in range(200)])
    assert draws.shape == (200, k)
    for s in range(k):
        low, high = math.floor(s * segment), math.ceil((s + 1) * segment) - 1
        assert draws[:, s].min() >= low and draws[:, s].max() <= high
        assert len(np.unique(draws[:, s])) > 5  # really random inside the segment


def test_train_sampling_can_draw_every_frame():
    rng = np.random.default_rng(1)
    draws = np.concatenate([sample_indices(37, 8, rng=rng).ravel() for _ in range(500)])
    assert set(draws.tolist()) == set(range(37))


def test_test_mode_takes_the_segment_centres_like_tsn():
    for num_frames, k in [(32, 8), (100, 3), (250, 8), (9, 8)]:
        tick = num_frames / k
        tsn = [int(tick / 2 + tick * x) for x in range(k)]  # TSN's _get_test_indices
        assert sample_indices(num_frames, k, mode="test").tolist() == [tsn]
    assert sample_indices(32, 8, mode="test", rng=0).tolist() == sample_indices(32, 8, mode="test").tolist()


def test_short_video_repeats_frames_spread_over_the_video():
    for mode in ("train", "test"):
        idx = sample_indices(3, 8, mode=mode, rng=0)[0]
        assert idx.shape == (8,)
        assert (np.diff(idx) >= 0).all() and idx.min() >= 0 and idx.max() <= 2
    assert sample_indices(3, 8, mode="test")[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(1, 4, mode="train", rng=0).tolist() == [[0, 0, 0, 0]]


def test_multi_clip_testing_shifts_the_centres_evenly():
    idx = sample_indices(90, 3, mode="test", num_clips=3)  # segments of 30 frames
    assert idx.tolist() == [[5, 35, 65], [15, 45, 75], [25, 55, 85]]
    assert sample_indices(90, 3, mode="train", num_clips=4, rng=0).shape == (4, 3)


def test_frames_per_segment_takes_consecutive_frames_inside_the_video():
    idx = sample_indices(40, 8, frames_per_segment=5, mode="train", rng=0, num_clips=2)
    assert idx.shape == (2, 40)
    snippets = idx.reshape(2, 8, 5)  # (V, K, L)
    assert (np.diff(snippets, axis=-1) == 1).all()
    assert idx.min() >= 0 and idx.max() <= 39
    test = sample_indices(40, 8, frames_per_segment=5, mode="test").reshape(8, 5)
    assert test[:, 0].tolist() == [int(36 / 8 * (k + 0.5)) for k in range(8)]  # starts span 40 - 5 + 1 = 36


def test_frames_per_segment_is_clamped_for_videos_shorter_than_a_snippet():
    assert sample_indices(3, 2, frames_per_segment=5, mode="test").tolist() == [[0, 1, 2, 2, 2] * 2]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 8), DataError),
        ((10, 0), ConfigError),
        ((10, 8, 0), ConfigError),
        ((10, 8, 1, "val"), ConfigError),
    ],
)
def test_bad_sampling_arguments_are_refused(args, error):
    with pytest.raises(error):
        sample_indices(*args)


# ------------------------------------------------------------------------------------------------ list files


def test_list_files_parse_and_resolve_against_root(tmp_path):
    (tmp_path / "a.txt").write_text("clips/x 12 3\n\nclips/y 7 0\n")
    entries = read_rawframe_list(tmp_path / "a.txt")
    assert [(e.path, e.num_frames, e.label) for e in entries] == [
        (tmp_path / "clips/x", 12, 3),
        (tmp_path / "clips/y", 7, 0),
    ]
    (tmp_path / "v.txt").write_text("my clips/one video.mp4 2\n/abs/b.mp4 1\n")
    videos = read_video_list(tmp_path / "v.txt", root="/data")
    assert [(str(e.path), e.label) for e in videos] == [
        ("/data/my clips/one video.mp4", 2),
        ("/abs/b.mp4", 1),
    ]


@pytest.mark.parametrize(
    ("text", "reader", "needle"),
    [
        ("a 3 1\nb 3\n", read_rawframe_list, "frame_dir num_frames label"),
        ("a 3 1\nb three 1\n", read_rawframe_list, "frame count 'three'"),
        ("a 1\nb -1\n", read_video_list, "label -1 is negative"),
        ("a 1\nb\n", read_video_list, "path label"),
    ],
)
def test_a_malformed_line_names_the_file_and_the_line(tmp_path, text, reader, needle):
    path = tmp_path / "list.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=needle) as info:
        reader(path)
    assert f"{path}:2" in str(info.value)


def test_missing_or_empty_list_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_video_list(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="no entries"):
        read_video_list(tmp_path / "empty.txt")


# ------------------------------------------------------------------------------------------------ datasets


def test_both_loaders_yield_the_same_clips_and_labels(synthetic_dir):
    raw = RawFrameDataset(synthetic_dir / "val_rawframes.txt", num_segments=4, mode="test")
    video = VideoDataset(synthetic_dir / "val.txt", num_segments=4, mode="test")
    assert len(raw) == len(video) == 16 and raw.labels == video.labels == list(range(16))
    for i in (0, 7, 15):
        a, b = raw[i], video[i]
        assert a["frames"].shape == b["frames"].shape == (4, 3, 32, 32)
        assert a["frames"].dtype == torch.float32 and (a["label"], a["index"]) == (i, i) == (
            b["label"],
            b["index"],
        )
        # JPEG frames and H.264 frames of the same render: equal up to compression error
        assert (a["frames"] - b["frames"]).abs().mean() < 0.05


def test_dataset_shapes_for_snippets_and_multiple_clips(synthetic_dir):
    ds = RawFrameDataset(
        synthetic_dir / "train_rawframes.txt",
        num_segments=3,
        frames_per_segment=5,
        mode="test",
        num_clips=2,
        transform=T.test_transform(28),
    )
    assert ds[0]["frames"].shape == (2 * 3 * 5, 3, 28, 28)
    train = VideoDataset(synthetic_dir / "train.txt", num_segments=8, transform=T.train_transform(24))
    assert train[3]["frames"].shape == (8, 3, 24, 24)


def test_train_sampling_follows_torch_seed(synthetic_dir):
    ds = VideoDataset(synthetic_dir / "train.txt", num_segments=3, mode="train")
    torch.manual_seed(0)
    first = [ds[i]["frames"] for i in range(4)]
    torch.manual_seed(0)
    again = [ds[i]["frames"] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_cached_frames_give_the_same_items_and_decode_each_folder_once(synthetic_dir, monkeypatch):
    from papernotes.video.data import datasets

    plain = RawFrameDataset(synthetic_dir / "train_rawframes.txt", num_segments=3, frames_per_segment=2)
    cached = RawFrameDataset(
        synthetic_dir / "train_rawframes.txt", num_segments=3, frames_per_segment=2, cache_frames=True
    )
    reads = []
    real = datasets.read_frames
    monkeypatch.setattr(datasets, "read_frames", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    for epoch in range(2):  # training draws: the same torch seed gives the same frames, cached or not
        torch.manual_seed(epoch)
        first = [plain[i]["frames"] for i in range(5)]
        torch.manual_seed(epoch)
        assert all(torch.equal(a, cached[i]["frames"]) for i, a in enumerate(first))
    # plain reads its 5 folders every epoch; cached reads each folder once, whole
    assert len(reads) == 2 * 5 + 5 and len(set(reads[-5:])) == 5


def test_cached_flow_frames_stack_like_uncached_ones(tmp_path):
    frames = np.arange(12)[:, None, None] * np.ones((1, 6, 8))
    write_frames(tmp_path / "v", (10 * frames).astype(np.uint8), FLOW_TEMPLATE, axis="x")
    write_frames(tmp_path / "v", (200 - 10 * frames).astype(np.uint8), FLOW_TEMPLATE, axis="y")
    (tmp_path / "flow.txt").write_text("v 12 4\n")
    kwargs = {"num_segments": 2, "frames_per_segment": 3, "mode": "test", "modality": "flow"}
    cached = RawFrameDataset(tmp_path / "flow.txt", cache_frames=True, **kwargs)
    assert torch.equal(cached[0]["frames"], RawFrameDataset(tmp_path / "flow.txt", **kwargs)[0]["frames"])
    assert set(cached.frame_cache) == {
        (tmp_path / "v", FLOW_TEMPLATE, "x"),
        (tmp_path / "v", FLOW_TEMPLATE, "y"),
    }
    assert cached.frame_cache[(tmp_path / "v", FLOW_TEMPLATE, "x")].shape == (12, 6, 8)  # the whole folder


def test_datasets_given_one_cache_decode_each_folder_once_between_them(synthetic_dir, monkeypatch):
    from papernotes.video.data import datasets

    reads = []
    real = datasets.read_frames
    monkeypatch.setattr(datasets, "read_frames", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    shared = {}
    first = RawFrameDataset(synthetic_dir / "train_rawframes.txt", num_segments=4, cache_frames=shared)
    second = RawFrameDataset(  # another model's sampling of the same folders
        synthetic_dir / "train_rawframes.txt", num_segments=2, frames_per_segment=3, cache_frames=shared
    )
    plain = RawFrameDataset(synthetic_dir / "train_rawframes.txt", num_segments=2, frames_per_segment=3)
    for i in range(len(first)):
        first[i]
    assert len(reads) == len(first) == len(shared)
    for i in range(len(second)):
        torch.manual_seed(i)
        expected = plain[i]["frames"]
        torch.manual_seed(i)
        assert torch.equal(second[i]["frames"], expected)
    assert len(reads) == 2 * len(first)  # only the plain dataset read: the second found every folder decoded


def test_dataloader_workers_give_the_same_items_in_test_mode(synthetic_dir):
    ds = RawFrameDataset(synthetic_dir / "test_rawframes.txt", num_segments=4, mode="test")

    def collect(workers):
        loader = DataLoader(ds, batch_size=5, num_workers=workers)
        return [(b["frames"], b["label"], b["index"]) for b in loader]

    serial, parallel = collect(0), collect(2)
    assert len(serial) == len(parallel) == 4
    for (f0, l0, i0), (f1, l1, i1) in zip(serial, parallel):
        assert torch.equal(f0, f1) and torch.equal(l0, l1) and torch.equal(i0, i1)
    assert serial[0][0].shape == (5, 4, 3, 32, 32)


@pytest.fixture
def broken_list(synthetic_dir, tmp_path) -> Path:
    """A video list: a good clip, a zero-byte .mp4, a missing file, another good clip."""
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = read_video_list(synthetic_dir / "val.txt")
    lines = [f"{good[0].path} 0", "empty.mp4 1", "missing.mp4 2", f"{good[5].path} 5"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def test_on_error_raise_names_the_bad_file(broken_list):
    ds = VideoDataset(broken_list, num_segments=2, mode="test")
    assert ds[0]["label"] == 0
    with pytest.raises(DataError, match=r"empty\.mp4.*0 bytes"):
        ds[1]
    with pytest.raises(DataError, match=r"list\.txt:3.*missing\.mp4 does not exist"):
        ds[2]


def test_on_error_skip_records_and_replaces_bad_items(broken_list):
    ds = VideoDataset(broken_list, num_segments=2, mode="test", on_error="skip")
    items = [ds[i] for i in range(len(ds))]
    assert [(it["index"], it["label"]) for it in items] == [(0, 0), (3, 5), (3, 5), (3, 5)]
    assert [Path(path).name for path, _ in ds.skipped] == ["empty.mp4", "missing.mp4"]
    assert "0 bytes" in ds.skipped[0][1] and "does not exist" in ds.skipped[1][1]
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["frames"].shape == (4, 2, 3, 32, 32)


def test_on_error_skip_covers_missing_frame_folders(synthetic_dir, tmp_path):
    good = read_rawframe_list(synthetic_dir / "val_rawframes.txt")[2]
    (tmp_path / "list.txt").write_text(f"nowhere 8 1\n{good.path} 8 2\n")
    ds = RawFrameDataset(tmp_path / "list.txt", num_segments=2, on_error="skip")
    assert ds[0]["index"] == 1 and "nowhere" in ds.skipped[0][0]
    with pytest.raises(DataError, match="nowhere"):
        RawFrameDataset(tmp_path / "list.txt", num_segments=2)[0]


def test_flow_modality_stacks_x_y_pairs_per_segment(tmp_path):
    # flow frame t has x = 10 t and y = 200 - 10 t everywhere, so every channel tells where it came from
    frames = np.arange(12)[:, None, None] * np.ones((1, 6, 8))
    write_frames(tmp_path / "v", (10 * frames).astype(np.uint8), FLOW_TEMPLATE, axis="x")
    write_frames(tmp_path / "v", (200 - 10 * frames).astype(np.uint8), FLOW_TEMPLATE, axis="y")
    (tmp_path / "flow.txt").write_text("v 12 4\n")
    ds = RawFrameDataset(
        tmp_path / "flow.txt", num_segments=2, frames_per_segment=3, mode="test", modality="flow"
    )
    item = ds[0]
    assert item["frames"].shape == (2, 6, 6, 8) and item["label"] == 4  # (K, 2L, H, W)
    starts = sample_indices(12, 2, 3, mode="test").reshape(2, 3)[:, 0]
    values = torch.round(item["frames"][:, :, 0, 0] * 255).long()
    for k, start in enumerate(starts):
        expected = [v for t in range(start, start + 3) for v in (10 * t, 200 - 10 * t)]  # x1, y1, x2, y2...
        assert values[k].tolist() == expected


# ---------------------------------------------------------------------------------------------- transforms


def _gradient_clip(n=4, h=40, w=48) -> np.ndarray:
    """uint8 (N, H, W, 3): brightness rising left to right, identical frames."""
    row = np.linspace(0, 255, w).astype(np.uint8)
    return np.broadcast_to(row[None, None, :, None], (n, h, w, 3)).copy()


def test_train_crop_is_the_same_for_every_frame_and_varies_between_clips():
    clip = np.random.default_rng(0).integers(0, 256, (1, 40, 48, 3), dtype=np.uint8).repeat(6, axis=0)
    transform = T.train_transform(size=24)
    torch.manual_seed(0)
    outputs = [transform(clip) for _ in range(8)]
    for out in outputs:
        assert out.shape == (6, 3, 24, 24)
        assert all(torch.equal(out[0], out[i]) for i in range(1, 6))
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_multi_scale_crop_boxes_use_tsn_scales_and_positions():
    crop = T.MultiScaleCrop(24)
    torch.manual_seed(0)
    allowed = {int(40 * s) for s in T.TSN_SCALES}
    for _ in range(100):
        top, left, h, w = crop.crop_box(40, 60)
        assert h in allowed and w in allowed and top + h <= 40 and left + w <= 60
        assert top in {int(q * (40 - h) / 4) for q in range(5)}  # a quarter grid, corners exact
        assert left in {int(q * (60 - w) / 4) for q in range(5)}


def test_flip_is_off_by_default_and_mirrors_when_on():
    clip = _gradient_clip()
    torch.manual_seed(0)
    for _ in range(20):  # no flip: the left half stays darker
        out = T.train_transform(size=24)(clip)
        assert out[..., :12].mean() < out[..., 12:].mean()
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in T.train_transform().transforms)
    flipped = T.RandomHorizontalFlip(p=1.0)(clip)
    assert flipped[..., :24].mean() > flipped[..., 24:].mean()


def test_flow_flip_negates_the_x_channels():
    flow = torch.full((2, 4, 5, 5), 0.7)  # (N, 2L, H, W) with x at even channels
    out = T.RandomHorizontalFlip(p=1.0, is_flow=True)(flow)
    assert torch.allclose(out[:, 0::2], torch.tensor(0.3)) and torch.allclose(out[:, 1::2], torch.tensor(0.7))


def test_normalisation_uses_imagenet_statistics():
    mean = torch.tensor(T.IMAGENET_MEAN)
    std = torch.tensor(T.IMAGENET_STD)
    ones = T.test_transform(size=16)(np.full((2, 20, 20, 3), 255, np.uint8))
    assert torch.allclose(ones[:, :, 0, 0], ((1 - mean) / std).expand(2, 3), atol=1e-5)
    grey = T.Normalize()(mean.view(1, 3, 1, 1).expand(1, 3, 4, 4).clone())
    assert grey.abs().max() < 1e-6


def test_resize_short_and_centre_crop_shapes():
    clip = torch.rand(3, 3, 40, 80)
    assert T.ResizeShort(20)(clip).shape == (3, 3, 20, 40)
    assert T.CenterCrop((10, 30))(clip).shape == (3, 3, 10, 30)
    assert T.test_transform(size=32)(np.zeros((2, 36, 64, 3), np.uint8)).shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match="resize first"):
        T.CenterCrop(50)(clip)


def test_to_float_clip_accepts_numpy_and_torch_layouts():
    u8 = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)  # (N, H, W, C)
    a = T.to_float_clip(u8)
    assert a.shape == (2, 3, 3, 4) and torch.equal(a, T.to_float_clip(torch.from_numpy(u8)))
    assert a[0, 1, 0, 0].item() == pytest.approx(1 / 255)
    assert T.to_float_clip(a) is a
    assert T.to_float_clip(np.zeros((2, 5, 5), np.uint8)).shape == (2, 1, 5, 5)
