"""Per-chunk features of real video for online detection: a 2-D backbone averaged over fixed-rate chunks.

Not a paper method; it follows how THUMOS'14 features are made for TRN/OadTR (a chunk of 6 frames at 24 fps,
that is 4 features per second, one feature per chunk from a 2-D CNN). Here: decode the video with each
frame's timestamp, place chunk k on the time interval [k/fps, (k+1)/fps) and give it the frames that start
inside it (:func:`chunk_frames`), run a torchvision ResNet (random weights, or local ImageNet weights through
``pretrained``) on each of them after the test transform, and average. Chunks are placed by time, not by a
rounded frame count, so the rate is exactly ``fps`` features per second of video whatever the video's
frame rate (10, 23.976, 29.97 fps ...; tested). A detector trained on features from the same extractor
can then stream over any video (``papernotes oad stream``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from papernotes.errors import ConfigError
from papernotes.video.data.transforms import test_transform
from papernotes.video.data.video_io import read_video_times
from papernotes.video.models.backbone import BACKBONES, FEATURE_DIMS, load_backbone_weights, resnet_backbone


@dataclass
class ExtractConfig:
    backbone: str = "resnet18"  # torchvision ResNet (features: 512 for resnet18, 2048 for resnet50)
    pretrained: str | None = None  # local ImageNet weights; without: fixed random weights (seed 0)
    size: int = 112  # crop size of the frames
    fps: float = 4.0  # features per second (THUMOS'14: 24 fps / 6-frame chunks)


def chunk_frames(times: np.ndarray, fps: float) -> list[np.ndarray]:
    """Frame indices of each chunk: chunk k = the frames whose start time (s) lies in [k/fps, (k+1)/fps).

    There are floor(t_last · fps) + 1 chunks: the video's duration at ``fps`` per second, the chunk that
    holds the last frame included. A chunk no frame starts in (a source slower than ``fps``) takes the frame
    on screen at its start: the last one that started before it.
    """
    if fps <= 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    times = np.asarray(times, dtype=np.float64)
    # 1e-9 s of slack: a timestamp k/fps computed in floating point must land in chunk k, not k - 1
    slot = np.floor(times * fps + 1e-9).astype(np.int64)  # (N,) chunk of each frame
    chunks = []
    for k in range(int(slot[-1]) + 1):
        members = np.flatnonzero(slot == k)
        if not len(members):
            members = np.array([np.flatnonzero(slot < k)[-1]])  # the frame still on screen
        chunks.append(members)
    return chunks


class ChunkFeatureExtractor:
    def __init__(self, cfg: ExtractConfig):
        if cfg.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {cfg.fps}")
        self.cfg = cfg
        # without weights, a fixed seed: features of two runs (extract, then stream) must be the same function
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = resnet_backbone(cfg.backbone).eval()
        if cfg.pretrained:
            load_backbone_weights(self.net, cfg.pretrained, BACKBONES[cfg.backbone](weights=None))
        self.transform = test_transform(cfg.size)
        self.dim = FEATURE_DIMS[cfg.backbone]

    @torch.no_grad()
    def chunk_feature(self, frames: np.ndarray) -> torch.Tensor:
        """Frames (N, H, W, 3) uint8 -> the mean backbone feature (D,)."""
        return self.net(self.transform(frames)).mean(dim=0)  # (N, 3, S, S) -> (N, D) -> (D,)

    def chunks(self, path: str | Path) -> Iterator[tuple[float, torch.Tensor]]:
        """(time in seconds of the chunk's end, (k + 1) / fps, and its feature (D,)) for each chunk k of
        the video, in order."""
        frames, times = read_video_times(path)  # (N, H, W, 3), (N,) seconds
        for k, members in enumerate(chunk_frames(times, self.cfg.fps)):
            yield (k + 1) / self.cfg.fps, self.chunk_feature(frames[members])

    def extract(self, path: str | Path) -> np.ndarray:
        """All chunk features of a video, (T, D) float32."""
        return torch.stack([f for _, f in self.chunks(path)]).numpy().astype(np.float32)
