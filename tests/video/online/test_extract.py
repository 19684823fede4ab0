"""Chunk features at an exact rate: chunks placed by timestamp, whatever the video's frame rate."""

from fractions import Fraction

import numpy as np
import pytest

from papernotes.video.data.video_io import frame_rate, read_video_times, write_video
from papernotes.video.online.data.extract import ChunkFeatureExtractor, ExtractConfig, chunk_frames

SECONDS = 3  # each test video lasts 3 s: 4 features per second give 12


@pytest.mark.parametrize("fps", [10, 23.976, 25, 29.97, 30])
def test_four_features_per_second_of_video_whatever_its_frame_rate(fps, tmp_path):
    rate = frame_rate(fps)
    count = round(SECONDS * rate)
    frames = np.zeros((count, 32, 32, 3), np.uint8)
    frames[:] = (np.arange(count) * 255 // count).astype(np.uint8)[:, None, None, None]  # a ramp over time
    video = write_video(tmp_path / "clip.mp4", frames, fps)
    decoded, times = read_video_times(video)
    assert len(decoded) == count
    np.testing.assert_allclose(times, np.arange(count) / float(rate), atol=1e-6)  # timestamps, exact rate
    chunks = chunk_frames(times, 4.0)
    assert len(chunks) == 4 * SECONDS  # not 5 per second at 10 fps, as rounding 10 / 4 frames gave
    assert np.array_equal(np.concatenate(chunks), np.arange(count))  # every frame once, in order
    for k, members in enumerate(chunks):
        assert (times[members] >= k / 4 - 1e-9).all() and (times[members] < (k + 1) / 4 - 1e-9).all()
    # the extractor gives one feature per chunk: the mean of its frames' features (a slim backbone: speed)
    extractor = ChunkFeatureExtractor(ExtractConfig(backbone="slim-resnet10", size=32, fps=4.0))
    features = extractor.extract(video)
    assert features.shape == (4 * SECONDS, 128)
    first = extractor.chunk_feature(decoded[chunks[0]]).numpy()
    np.testing.assert_allclose(features[0], first, rtol=1e-5, atol=1e-6)
    ends = [end for end, _ in extractor.chunks(video)]
    assert ends == [(k + 1) / 4 for k in range(4 * SECONDS)]


def test_a_source_slower_than_the_feature_rate_repeats_the_frame_on_screen():
    times = np.array([0.0, 0.5, 1.0])  # 2 fps
    assert [c.tolist() for c in chunk_frames(times, 4.0)] == [[0], [0], [1], [1], [2]]
    # a frame exactly on a chunk boundary belongs to the chunk that starts there
    assert [c.tolist() for c in chunk_frames(np.arange(8) / 8, 4.0)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_ntsc_rates_are_ratios():
    assert frame_rate(29.97) == Fraction(30000, 1001) and frame_rate(23.976) == Fraction(24000, 1001)
    assert frame_rate(25) == 25 and frame_rate(12.5) == Fraction(25, 2)
