"""Train, evaluate and profile any recognizer on mmaction list files, through ``core.train``.

Not a paper method: the shared harness that makes the methods comparable (same data, schedule, budget).

* :func:`build_dataset` reads a rawframe list (``dir num_frames label``) or a video list (``path label``),
  sampling as the model asks (``frames_per_segment``; a flow list as well for Two-Stream).
* :class:`LoaderBatches` adapts a DataLoader to ``core.train``'s ``batches(step, micro_step)``. Its order of
  examples is a pure function of (seed, step): a seeded permutation per epoch. It counts the entries that
  the dataset skipped (``on_error="skip"``) even when DataLoader workers did the skipping.
* :func:`evaluate` averages the logits of V test clips per video (TSN's multi-clip testing) and returns
  logits and labels for ``metrics.classification``.
* :func:`pair_accuracy` measures the order claim directly: for each pair of classes that differ only in
  temporal order, the accuracy on that pair's test clips when the model picks between the two classes
  alone (argmax over the pair's two logits). Chance, and the ceiling of an order-blind model, is 50 %.
* :func:`profile_recognizer` gives parameters, FLOPs (``torch.utils.flop_counter``: convolutions and matrix
  products, the convention of the papers' FLOP tables) and CPU latency per clip.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from papernotes.core.checkpoint import check_state_dict, load_weights, save_weights
from papernotes.core.files import atomic_write_dir
from papernotes.core.train import Batch
from papernotes.errors import CheckpointError, ConfigError, DataError
from papernotes.video.data.datasets import FrameCache, RawFrameDataset, VideoDataset
from papernotes.video.data.transforms import TSN_SCALES, test_transform, train_transform
from papernotes.video.models import build_recognizer

logger = logging.getLogger(__name__)

RECOGNIZER_FILE = "recognizer.json"
WEIGHTS_FILE = "model.safetensors"


# ------------------------------------------------------------------------------------------------ data


def list_format(list_file: str | Path) -> str:
    """ "rawframes" (3 fields per line) or "videos" (2 fields), from the first non-empty line."""
    path = Path(list_file)
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) in (2, 3):
            return "videos" if len(fields) == 2 else "rawframes"
        raise DataError(
            f"{path}:{number}: expected 'path label' (video list) or 'dir num_frames label' (rawframe list), "
            f"got {len(fields)} fields"
        )
    raise DataError(f"list file {path} is empty")


class PairedDataset(Dataset):
    """RGB and flow datasets over the same videos, in the same order: items {"rgb", "flow", "label"}."""

    def __init__(self, rgb: Dataset, flow: Dataset):
        if len(rgb) != len(flow) or rgb.labels != flow.labels:
            raise DataError(
                f"the RGB list {rgb.list_file} and the flow list {flow.list_file} must list the same videos "
                f"in the same order with the same labels ({len(rgb)} vs {len(flow)} entries)"
            )
        self.rgb, self.flow = rgb, flow
        self.entries, self.list_file = rgb.entries, rgb.list_file
        self.skipped = rgb.skipped  # the RGB dataset decides which entries are skipped

    def __len__(self) -> int:
        return len(self.rgb)

    @property
    def labels(self) -> list[int]:
        return self.rgb.labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb = self.rgb[index]
        flow = self.flow[rgb["index"]]
        return {"rgb": rgb["frames"], "flow": flow["frames"], "label": rgb["label"], "index": rgb["index"]}


def build_dataset(
    model: nn.Module,
    list_file: str | Path,
    *,
    mode: str,
    size: int,
    num_clips: int = 1,
    on_error: str = "raise",
    root: str | Path | None = None,
    flow_list: str | Path | None = None,
    flip: bool = False,
    scale_size: int | None = None,
    crop_scales: Sequence[float] = TSN_SCALES,
    cache_frames: bool | FrameCache = False,
) -> Dataset:
    """The dataset that ``model`` needs: its ``num_segments``, ``frames_per_segment`` and ``modality``.

    ``scale_size`` (default ``size`` · 256/224) and ``crop_scales`` (training only) go to the transforms
    (``data.transforms``); ``scale_size=size, crop_scales=(1.0,)`` feeds frames of ``size`` px unchanged.
    ``cache_frames`` keeps rawframe folders decoded in memory (``RawFrameDataset``); video lists ignore it.
    A dict given as ``cache_frames`` is that memory, shared by every dataset built with it: the models of one
    experiment decode the training frames once, not once each.
    """
    common = {"num_segments": model.num_segments, "mode": mode, "num_clips": num_clips, "on_error": on_error}
    common["root"] = root

    def transform(modality: str):
        if mode == "train":
            return train_transform(size, scale_size, flip=flip, modality=modality, scales=crop_scales)
        return test_transform(size, scale_size, modality=modality)

    def rgb_dataset() -> Dataset:
        kwargs = {**common, "frames_per_segment": model.frames_per_segment, "transform": transform("rgb")}
        if list_format(list_file) == "rawframes":
            return RawFrameDataset(list_file, **kwargs, cache_frames=cache_frames)
        return VideoDataset(list_file, **kwargs)

    if model.modality == "rgb":
        return rgb_dataset()
    if model.modality != "rgb+flow":
        raise ConfigError(f"no dataset for modality {model.modality!r}")
    if flow_list is None:
        raise ConfigError(
            "two-stream needs --flow-list: a rawframe list of flow folders (papernotes video flow)"
        )
    if list_format(flow_list) != "rawframes":
        raise DataError(f"{flow_list}: the flow list must be a rawframe list ('dir num_frames label')")
    flow = RawFrameDataset(
        flow_list,
        **common,
        frames_per_segment=model.flow_length,
        transform=transform("flow"),
        modality="flow",
        cache_frames=cache_frames,
    )
    return PairedDataset(rgb_dataset(), flow)


def model_inputs(batch: dict[str, Any]) -> torch.Tensor | dict[str, torch.Tensor]:
    """The model's input from a collated batch: "frames", or the {"rgb", "flow"} pair."""
    if "frames" in batch:
        return batch["frames"]
    return {"rgb": batch["rgb"], "flow": batch["flow"]}


def recognizer_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the class logits; Two-Stream sums its two streams' losses (independent streams)."""
    labels = batch["label"]
    if "frames" in batch:
        return F.cross_entropy(model(batch["frames"]), labels), len(labels)
    streams = model(model_inputs(batch), return_streams=True)
    return sum(F.cross_entropy(logits, labels) for logits in streams.values()), len(labels)


class _EpochSampler(Sampler[int]):
    """Indices of a seeded permutation per epoch, endlessly, starting at example ``start``."""

    def __init__(self, size: int, seed: int, start: int = 0):
        self.size, self.seed, self.start = size, seed, start

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.size)
        while True:
            yield from self.order(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**31


class LoaderBatches:
    """``core.train``'s ``batches(step, micro_step)`` over a dataset, with DataLoader workers.

    Steps must be asked for in order (as ``core.train`` does). Row r of step s is example
    ``s * batch_size + r`` of the endless seeded stream, so a resumed run continues where it stopped.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0, start_step: int = 0
    ):
        if len(dataset) == 0:
            raise DataError("the training list has no entries")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = _EpochSampler(len(dataset), seed, start_step * batch_size)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self._requested = iter(self.sampler)  # the same stream, to see which entries were replaced
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._bad: set[int] = set()

    @property
    def skipped(self) -> list[str]:
        """Paths of the entries that failed to load and were replaced by the next loadable one."""
        return [str(self.dataset.entries[i].path) for i in sorted(self._bad)]

    def __call__(self, step: int, micro_step: int) -> Batch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        requested = [next(self._requested) for _ in range(len(batch["label"]))]
        for want, got in zip(requested, batch["index"].tolist()):
            i = want
            while i != got:  # the dataset moved on past failing entries, wrapping around
                self._bad.add(i)
                i = (i + 1) % len(self.dataset)
        return {k: v for k, v in batch.items() if k != "index"}


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """{"logits": (N, C), "labels": (N,), "index": (N,), "skipped": [paths]}.

    The logits average the V clips of each video. Entries that failed to load (``on_error="skip"``) are
    left out and listed in "skipped", also when DataLoader workers did the loading.
    """
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    views = dataset.rgb.num_clips if isinstance(dataset, PairedDataset) else dataset.num_clips
    logits, labels, index = [], [], []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        inputs = model_inputs(batch)
        # (B, V·K·L, ...) -> (B·V, K·L, ...): every clip is one model input
        split = {k: v.reshape(v.shape[0] * views, -1, *v.shape[2:]) for k, v in _as_dict(inputs).items()}
        out = model(split.get("frames", split))
        logits.append(out.view(-1, views, out.shape[-1]).mean(dim=1))  # (B, V, C) -> (B, C)
        labels.append(batch["label"])
        index.append(batch["index"])
    if not logits:
        raise DataError("evaluation list has no entries")
    logits_t, labels_t, index_t = torch.cat(logits).float(), torch.cat(labels), torch.cat(index)
    # with on_error="skip" a failing entry is replaced by the next loadable one: score each video once
    first = {}
    for row, i in enumerate(index_t.tolist()):
        first.setdefault(i, row)
    keep = torch.tensor(sorted(first.values()), dtype=torch.long)
    skipped = [str(dataset.entries[i].path) for i in range(len(dataset)) if i not in first]
    return {"logits": logits_t[keep], "labels": labels_t[keep], "index": index_t[keep], "skipped": skipped}


def pair_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, pairs: list[tuple[int, int]] | list[list[int]]
) -> list[float | None]:
    """Per pair (a, b): the fraction of clips labelled a or b whose logit of the true class beats the other's.

    logits (N, C), labels (N,). A pair with no test clip gives None (nothing to judge). Ties count as wrong,
    so a model with constant logits scores 0, not 50 %.
    """
    accuracies: list[float | None] = []
    for a, b in pairs:
        if not (0 <= a < logits.shape[1] and 0 <= b < logits.shape[1]) or a == b:
            raise ConfigError(f"pair ({a}, {b}): expected two different classes of the {logits.shape[1]}")
        chosen = (labels == a) | (labels == b)
        if not chosen.any():
            accuracies.append(None)
            continue
        rows, truth = logits[chosen], labels[chosen]  # (n, C), (n,)
        other = torch.where(truth == a, b, a)  # the pair's other class
        own_logit = rows.gather(1, truth[:, None])[:, 0]
        other_logit = rows.gather(1, other[:, None])[:, 0]
        accuracies.append((own_logit > other_logit).float().mean().item())
    return accuracies


def _as_dict(inputs: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return inputs if isinstance(inputs, dict) else {"frames": inputs}


# ------------------------------------------------------------------------------------------------ profiling


def example_input(model: nn.Module, size: int, batch: int = 1) -> torch.Tensor | dict[str, torch.Tensor]:
    """A random input of the shape ``model`` takes."""
    K = model.num_segments
    if model.modality == "rgb+flow":
        return {
            "rgb": torch.randn(batch, K, 3, size, size),
            "flow": torch.randn(batch, K, 2 * model.flow_length, size, size),
        }
    return torch.randn(batch, K * model.frames_per_segment, 3, size, size)


@torch.no_grad()
def profile_recognizer(model: nn.Module, size: int, repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Parameters, forward FLOPs per clip and median CPU latency per clip (batch 1, eval mode)."""
    model.eval()
    x = example_input(model, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        model(x)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops": int(counter.get_total_flops()),
        "latency_ms": 1000 * statistics.median(times),
    }


# ------------------------------------------------------------------------------------------------ checkpoints


def save_recognizer(
    model: nn.Module, meta: dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``recognizer.json`` (how to rebuild it), ``model.safetensors`` and one JSON file per ``extra``
    item ({file name: object}) into ``out_dir``, atomically: the folder appears complete or not at all."""
    for key in ("name", "num_classes", "num_segments", "backbone"):
        if key not in meta:
            raise ConfigError(f"save_recognizer: meta lacks {key!r}")
    with atomic_write_dir(out_dir) as tmp:
        (tmp / RECOGNIZER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_weights(tmp / WEIGHTS_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        for name, content in (extra or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
    return Path(out_dir)


def load_recognizer(checkpoint_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a recognizer written by :func:`save_recognizer` (``papernotes video train --out``)."""
    directory = Path(checkpoint_dir)
    meta_file, weights_file = directory / RECOGNIZER_FILE, directory / WEIGHTS_FILE
    if not meta_file.is_file() or not weights_file.is_file():
        raise CheckpointError(
            f"{directory} is not a recognizer checkpoint: expected {RECOGNIZER_FILE} and {WEIGHTS_FILE} "
            "(written by papernotes video train --out)"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_file}: not valid JSON ({exc})") from exc
    model = build_recognizer(meta["name"], meta["num_classes"], meta["num_segments"], meta["backbone"])
    state = load_weights(weights_file)
    check_state_dict(model.state_dict(), state, weights_file, f"a {meta['name']} recognizer")
    model.load_state_dict(state)
    return model, meta
