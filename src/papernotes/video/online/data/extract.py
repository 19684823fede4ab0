"""Per-chunk features of real video for online detection: a 2-D backbone averaged over fixed-rate chunks.

Not a paper method; it follows how THUMOS'14 features are made for TRN/OadTR (a chunk of 6 frames at 24 fps,
that is 4 features per second, one feature per chunk from a 2-D CNN). Here: decode the video, cut it into
chunks of ``src_fps / fps`` frames, run a torchvision ResNet (random weights, or local ImageNet weights
through ``pretrained``) on each frame of the chunk after the test transform, and average. A detector
trained on features from the same extractor can then stream over any video (``papernotes oad stream``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from papernotes.errors import ConfigError
from papernotes.video.data.transforms import test_transform
from papernotes.video.data.video_io import read_video, video_fps
from papernotes.video.models.backbone import BACKBONES, FEATURE_DIMS, load_backbone_weights, resnet_backbone


@dataclass
class ExtractConfig:
    backbone: str = "resnet18"  # torchvision ResNet (features: 512 for resnet18, 2048 for resnet50)
    pretrained: str | None = None  # local ImageNet weights; without: fixed random weights (seed 0)
    size: int = 112  # crop size of the frames
    fps: float = 4.0  # features per second (THUMOS'14: 24 fps / 6-frame chunks)


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
        """(time in seconds of the chunk's end, feature (D,)) for each chunk of the video, in order."""
        frames = read_video(path)  # (N, H, W, 3)
        source_fps = video_fps(path)
        step = max(1, round(source_fps / self.cfg.fps))  # frames per chunk
        for start in range(0, len(frames), step):
            chunk = frames[start : start + step]
            yield (start + len(chunk)) / source_fps, self.chunk_feature(chunk)

    def extract(self, path: str | Path) -> np.ndarray:
        """All chunk features of a video, (T, D) float32."""
        return torch.stack([f for _, f in self.chunks(path)]).numpy().astype(np.float32)
