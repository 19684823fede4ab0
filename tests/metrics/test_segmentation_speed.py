"""The fast confusion-matrix path (narrow dtypes, one histogram per chunk, threads) gives exactly the plain
path's matrix and errors, leaves its inputs alone, and is faster than the plain path."""

import time

import numpy as np
import pytest
import torch

import papernotes.metrics.segmentation as segmentation
from papernotes.errors import DataError
from papernotes.metrics.segmentation import SegmentationMetrics, plain_counts


def plain(pred, target, C, ignore_index):
    """The plain path on its own: int64, a boolean mask, one bincount (what update() did before)."""
    pred, target = torch.as_tensor(pred).reshape(-1), torch.as_tensor(target).reshape(-1)
    try:
        return plain_counts(target, pred, C, ignore_index)
    except DataError as exc:
        return str(exc)


def fast(pred, target, C, ignore_index):
    metrics = SegmentationMetrics(C, ignore_index)
    try:
        metrics.update(pred, target)
    except DataError as exc:
        return str(exc)
    return metrics.confusion


def same(a, b) -> bool:
    return a == b if isinstance(a, str) or isinstance(b, str) else torch.equal(a, b)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4096 pixels, so that small maps go through many chunks and every worker thread."""
    monkeypatch.setattr(segmentation, "CHUNK_PIXELS", 4096)


@pytest.mark.parametrize("chunked", [False, True])
def test_matrix_and_errors_equal_the_plain_path_for_every_dtype_and_ignore_index(chunked, request):
    if chunked:
        request.getfixturevalue("small_chunks")
    rng = np.random.default_rng(0)
    cases = 0
    for trial in range(240):
        C = int(rng.integers(1, 40))
        ignore_index = [255, None, -1, C, 1000][trial % 5]
        dtype = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16][trial % 6]
        shape = tuple(int(n) for n in rng.integers(1, 70, size=int(rng.integers(1, 4))))
        target, pred = rng.integers(0, C, shape), rng.integers(0, C, shape)
        if ignore_index is not None:
            target[rng.random(shape) < 0.1] = ignore_index
            pred[target == ignore_index] = rng.integers(0, 120)  # anything goes where the truth is ignored
        kind = trial % 7
        if kind == 0:
            target.flat[rng.integers(target.size)] = C + int(rng.integers(0, 5))  # a bad target label
        elif kind == 1:
            pred.flat[rng.integers(pred.size)] = C + int(rng.integers(0, 5))  # a bad prediction
        elif kind == 2:
            pred.flat[rng.integers(pred.size)] = -1
        info = np.iinfo(dtype)
        if min(target.min(), pred.min()) < info.min or max(target.max(), pred.max()) > info.max:
            continue  # the labels do not fit this dtype
        if ignore_index is not None and not info.min <= ignore_index <= info.max:
            continue
        target, pred = target.astype(dtype), pred.astype(dtype)
        assert same(fast(pred, target, C, ignore_index), plain(pred, target, C, ignore_index)), (
            trial, C, ignore_index, dtype, shape,
        )  # fmt: skip
        cases += 1
    assert cases > 150


def test_errors_name_the_first_bad_label_as_before(small_chunks):
    target = np.zeros(50_000, np.int64)
    pred = np.zeros(50_000, np.int64)
    target[30_000], target[40_000] = 9, 7  # the first in the map's order is named, whichever chunk holds it
    assert fast(pred, target, 5, 255) == "target label 9 is outside 0..4 (and not ignore_index)"
    target[:] = 0
    pred[45_000] = 10**12  # far out of range: too wide to histogram, the plain path names it
    assert fast(pred, target, 5, 255) == f"prediction label {10**12} is outside 0..4 (and not ignore_index)"
    pred[45_000] = 0
    pred[10], target[10] = 200, 255  # out of range, but where the truth is ignored: dropped, no error
    assert int(fast(pred, target, 5, 255).sum()) == 50_000 - 1


def test_inputs_are_left_alone_and_odd_layouts_work(small_chunks):
    rng = np.random.default_rng(1)
    target = torch.as_tensor(rng.integers(0, 19, (3, 64, 80)), dtype=torch.int16)
    pred = torch.as_tensor(rng.integers(0, 19, (3, 64, 80)), dtype=torch.int16)
    before = target.clone(), pred.clone()
    counts = fast(pred, target, 19, 255)
    assert torch.equal(target, before[0]) and torch.equal(pred, before[1])  # the index is a copy
    # a transposed (non-contiguous) view and bool maps
    assert torch.equal(fast(pred.transpose(1, 2), target.transpose(1, 2), 19, 255), counts)
    flags = torch.as_tensor(rng.random((40, 50)) < 0.5), torch.as_tensor(rng.random((40, 50)) < 0.5)
    assert torch.equal(fast(*flags, 2, None), plain(*flags, 2, None))
    assert int(fast(np.zeros(0, np.uint8), np.zeros(0, np.uint8), 3, 255).sum()) == 0


def test_uint8_maps_are_counted_faster_than_the_plain_path():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (4, 512, 512), generator=g, dtype=torch.uint8)
    pred = torch.randint(0, 19, (4, 512, 512), generator=g, dtype=torch.uint8)

    def best_of_three(fn):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    ours = best_of_three(lambda: SegmentationMetrics(19).update(pred, target))
    theirs = best_of_three(lambda: plain(pred, target, 19, 255))
    # measured on 2 cores: about 10-20x (benchmarks/segmentation.py has the numbers); 2x leaves room for load
    assert theirs / ours > 2
