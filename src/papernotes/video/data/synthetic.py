"""The embedded video benchmark: procedurally generated clips, most of whose classes need temporal order.

Not a paper method. It stands in, offline, for Something-Something (Goyal et al. 2017, arXiv:1706.04261),
the dataset on which TSN (Wang et al. 2016, arXiv:1608.00859) falls far behind temporal models such as
TSM (Lin et al. 2019, arXiv:1811.08383) and TDN (Wang et al. 2021, arXiv:2012.10071), because its classes
("pushing left to right" vs "right to left") differ in order, not in appearance.

Each clip shows one foreground object (a scikit-learn ``load_digits`` digit, upscaled, or a drawn shape) in a
random colour, size, angle and position, over clutter: a low-frequency colour field, static soft blobs,
moving discs in front of the object, per-frame brightness flicker and pixel noise.

Classes (ids):

* Order-sensitive pairs (0-11). Class B of each pair is *exactly* the time reversal of class A's random
  process: ``render_clip(B, seed) == render_clip(A, seed)[::-1]``. So the set of frames of a clip, taken
  without their order, has the same distribution in A and B; only the order tells them apart.
  0/1 move left/right, 2/3 move up/down, 4/5 rotate clockwise/counter-clockwise, 6/7 approach (grow) /
  recede (shrink), 8/9 appear (fade in) / disappear (fade out), 10/11 a ring then a cross / a cross then a
  ring. The rotating object is a pointer (a bar with a disc at its tip), the others digits.
  Speeds, travel, start positions, rotation rates and switch/fade times vary per clip.
* Appearance classes (12-15): a drawn square, ring, triangle or cross, jittering in place. One frame suffices.

A model blind to frame order (TSN's average consensus over segments) can at best find the pair, so on a
balanced test set its ceiling is 50% on classes 0-11 and 100% on 12-15: (6 + 4) / 16 = 62.5% overall. A
model that sees order can reach 100%.

Output layout (``make_synthetic``): ``videos/<class>/<class>_0000.mp4``, optional
``rawframes/<class>/<class>_0000/img_00001.jpg``, mmaction lists ``{train,val,test}.txt`` (``path label``)
and ``{train,val,test}_rawframes.txt`` (``dir num_frames label``), optional TSN flow
``flow/videos/<class>/<class>_0000/flow_x_00001.jpg`` with ``flow/{train,val,test}_flow.txt``, and
``classes.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from papernotes.core.files import atomic_write_dir
from papernotes.errors import ConfigError
from papernotes.video.data.flow import write_flow_folder
from papernotes.video.data.video_io import default_codec, write_frames, write_video

logger = logging.getLogger(__name__)

FORMAT = "papernotes-synthetic-video-3"  # 2: the clips of a pair are twins; 3: a pointer turns, shapes switch
SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
# A foreground process: (rng, size S, num_frames T) -> (alpha (T, S, S) float32 in [0, 1], RGB colour (3,))
Process = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------- masks


@functools.lru_cache(maxsize=1)
def _digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as alpha masks (1797, 10, 10) in [0, 1] (1 px zero border), labels."""
    from sklearn.datasets import load_digits  # lazy: importing sklearn takes about a second

    digits = load_digits()
    masks = np.pad(digits.images.astype(np.float32) / 16.0, ((0, 0), (1, 1), (1, 1)))
    return masks, digits.target


@functools.lru_cache(maxsize=1)
def _shape_bank() -> dict[str, np.ndarray]:
    """Antialiased 34x34 alpha masks of the drawn shapes: the appearance classes' four and the pointer."""
    shapes = {}
    for name in ("square", "ring", "triangle", "cross", "pointer"):
        canvas = np.zeros((34, 34), np.uint8)
        if name == "square":
            cv2.rectangle(canvas, (6, 6), (27, 27), 255, -1)
        elif name == "ring":
            cv2.circle(canvas, (17, 17), 12, 255, 5, cv2.LINE_AA)
        elif name == "triangle":
            cv2.fillPoly(canvas, [np.array([[17, 3], [31, 29], [3, 29]], np.int32)], 255, cv2.LINE_AA)
        elif name == "pointer":  # from the centre (the pivot) to a disc at the right edge
            cv2.rectangle(canvas, (16, 15), (28, 18), 255, -1)
            cv2.circle(canvas, (28, 17), 5, 255, -1, cv2.LINE_AA)
            cv2.circle(canvas, (17, 17), 3, 255, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (13, 3), (20, 30), 255, -1)
            cv2.rectangle(canvas, (3, 13), (30, 20), 255, -1)
        shapes[name] = canvas.astype(np.float32) / 255.0
    return shapes


def _random_digit(rng: np.random.Generator, digit: int | None = None) -> np.ndarray:
    masks, labels = _digit_bank()
    pool = np.flatnonzero(labels == digit) if digit is not None else np.arange(len(masks))
    return masks[pool[rng.integers(len(pool))]]


def _place(mask: np.ndarray, cx: float, cy: float, extent: float, angle: float, size: int) -> np.ndarray:
    """Warp a square mask so that it is ``extent`` px wide, rotated by ``angle`` degrees (counter-clockwise
    on screen) and centred at (cx, cy) on an S x S canvas."""
    m = mask.shape[0]
    centre = (m - 1) / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), angle, extent / m)  # (2, 3) about the mask centre
    matrix[:, 2] += (cx - centre, cy - centre)
    return cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def _track(masks: list[np.ndarray], cx, cy, extent, angle, size: int) -> np.ndarray:
    """Per-frame placements (T, S, S); ``cx``... are arrays of length T (or scalars)."""
    t = len(masks)
    cx, cy, extent, angle = (
        np.broadcast_to(np.asarray(v, np.float64), (t,)) for v in (cx, cy, extent, angle)
    )
    return np.stack([_place(masks[i], cx[i], cy[i], extent[i], angle[i], size) for i in range(t)])


def _wobble(rng: np.random.Generator, masks: list[np.ndarray], centre: np.ndarray, extent, angle, size: int,
            scale: float = 0.3) -> np.ndarray:  # fmt: skip
    """:func:`_track` around a fixed centre (x, y) plus a small random walk (zero-mean steps of ``scale`` px):
    a random walk reversed is another random walk, so it does not reveal the direction of time."""
    cx, cy = (centre + np.cumsum(rng.normal(0, scale, (len(masks), 2)), axis=0)).T  # (T,) each
    return _track(masks, cx, cy, extent, angle, size)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A bright, saturated colour: one channel high, the others random (the clutter is darker)."""
    colour = rng.uniform(0.1, 0.8, 3)
    colour[rng.integers(3)] = rng.uniform(0.85, 1.0)
    return colour.astype(np.float32)


# ------------------------------------------------------------------------------------------- processes


def _translate(axis: int) -> Process:
    """The object travels against ``axis`` (0: x, leftwards; 1: y, upwards) at a constant random speed."""

    def process(rng: np.random.Generator, size: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        extent = size * rng.uniform(0.3, 0.42)
        lo, hi = 0.4 * extent, size - 0.4 * extent  # the object may be cut off a little at the border
        travel = size * rng.uniform(0.25, 0.55)  # speed = travel / (T - 1) px per frame
        start = rng.uniform(lo + travel, hi)
        along = start - travel * np.linspace(0.0, 1.0, t)
        across = np.clip(rng.uniform(lo, hi) + size * rng.uniform(-0.1, 0.1) * np.linspace(0, 1, t), lo, hi)
        cx, cy = (along, across) if axis == 0 else (across, along)
        mask = _random_digit(rng)
        alpha = _track([mask] * t, cx, cy, extent, rng.uniform(-25, 25), size)
        return alpha, _colour(rng)

    return process


def _rotate(rng: np.random.Generator, size: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """A pointer (a bar from a pivot to a disc) turns clockwise by 120-240 degrees over the clip about its
    pivot (OpenCV angles are counter-clockwise on screen). TSN's K segments sample consecutive frames at most
    2T/K - 1 frames apart: at T = 8 and K = 4, 3/7 of the turn, at most 103 degrees (112 at T = 16), always
    less than half a turn, so the direction between two sampled frames is defined.

    A pointer, not a digit: its angle is readable from one coarse frame, and it has no rotational symmetry,
    so any turn of under 180 degrees between two frames has one direction. At 32 px a turned digit is a few
    pixels after the network's stem, and its symmetries (0, 1, 8) make the direction ambiguous: in format 2
    no model learned this pair.
    """
    extent = size * rng.uniform(0.55, 0.7)  # the pointer's length is half the extent
    centre = rng.uniform(0.4, 0.6, 2) * size
    angle = rng.uniform(0, 360) - rng.uniform(120, 240) * np.linspace(0.0, 1.0, t)
    return _wobble(rng, [_shape_bank()["pointer"]] * t, centre, extent, angle, size), _colour(rng)


def _approach(rng: np.random.Generator, size: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Growth from 15-22% to 45-60% of the frame, geometric in time (constant relative speed)."""
    small, large = size * rng.uniform(0.15, 0.22), size * rng.uniform(0.45, 0.6)
    extent = small * (large / small) ** np.linspace(0.0, 1.0, t)
    centre = rng.uniform(0.35, 0.65, 2) * size
    return _wobble(rng, [_random_digit(rng)] * t, centre, extent, rng.uniform(-25, 25), size), _colour(rng)


def _fade_in(rng: np.random.Generator, size: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Opacity ramps 0 -> 1, starting in the first 40% of the clip and lasting 25-50% of it."""
    extent = size * rng.uniform(0.3, 0.45)
    centre = rng.uniform(0.3, 0.7, 2) * size
    alpha = _wobble(rng, [_random_digit(rng)] * t, centre, extent, rng.uniform(-25, 25), size)
    start, duration = rng.uniform(0.0, 0.4) * (t - 1), rng.uniform(0.25, 0.5) * (t - 1)
    opacity = np.clip((np.arange(t) - start) / max(duration, 1e-6), 0.0, 1.0).astype(np.float32)
    return alpha * opacity[:, None, None], _colour(rng)


def _switch(first: str, second: str) -> Process:
    """Shape ``first`` in place, replaced by shape ``second`` at a random time in the clip's middle 30%.

    Shapes of the appearance classes, not digits: a model learns them for those classes anyway, so the pair
    asks only for their order. In format 2 this pair was a 3 turning into a 7, and at 32 px no model
    learned to tell the 3 from the 7 in its training budget.
    """

    def process(rng: np.random.Generator, size: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        extent = size * rng.uniform(0.35, 0.5)
        centre = rng.uniform(0.3, 0.7, 2) * size
        a, b = _shape_bank()[first], _shape_bank()[second]
        switch = rng.uniform(0.35, 0.65) * (t - 1)
        masks = [a if i < switch else b for i in range(t)]
        return _wobble(rng, masks, centre, extent, rng.uniform(-20, 20), size), _colour(rng)

    return process


def _static_shape(name: str) -> Process:
    """A drawn shape jittering in place with a slow random spin: recognisable from any single frame."""

    def process(rng: np.random.Generator, size: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        extent = size * rng.uniform(0.3, 0.45)
        centre = rng.uniform(0.3, 0.7, 2) * size
        angle = rng.uniform(0, 360) + rng.uniform(-1.0, 1.0) * np.arange(t)
        return _wobble(rng, [_shape_bank()[name]] * t, centre, extent, angle, size, scale=0.4), _colour(rng)

    return process


@dataclass(frozen=True)
class ClassSpec:
    """One class of the benchmark."""

    name: str
    description: str
    process: Process  # draws the foreground
    reverse: bool = False  # play the process backwards (class B of an order-sensitive pair)
    opposite: int | None = None  # id of the class with the reversed order, for order-sensitive classes


# (name A, name B, description A, description B, process): class B plays class A's process backwards
_ORDER_PAIRS = (
    ("move_left", "move_right", "a digit travels leftwards", "a digit travels rightwards", _translate(0)),
    ("move_up", "move_down", "a digit travels upwards", "a digit travels downwards", _translate(1)),
    (
        "rotate_clockwise",
        "rotate_counterclockwise",
        "a pointer turns clockwise",
        "a pointer turns anticlockwise",
        _rotate,
    ),
    ("approach", "recede", "a digit grows (comes closer)", "a digit shrinks (moves away)", _approach),
    ("appear", "disappear", "a digit fades in", "a digit fades out", _fade_in),
    (
        "ring_then_cross",
        "cross_then_ring",
        "a ring turns into a cross",
        "a cross turns into a ring",
        _switch("ring", "cross"),
    ),
)


def _order_sensitive_classes() -> list[ClassSpec]:
    classes: list[ClassSpec] = []
    for name_a, name_b, desc_a, desc_b, process in _ORDER_PAIRS:
        first = len(classes)
        classes.append(ClassSpec(name_a, desc_a, process, reverse=False, opposite=first + 1))
        classes.append(ClassSpec(name_b, desc_b, process, reverse=True, opposite=first))
    return classes


CLASSES: tuple[ClassSpec, ...] = (
    *_order_sensitive_classes(),
    *(
        ClassSpec(f"static_{shape}", f"a {shape} jitters in place", _static_shape(shape))
        for shape in ("square", "ring", "triangle", "cross")
    ),
)
ORDER_SENSITIVE = tuple(i for i, c in enumerate(CLASSES) if c.opposite is not None)
PAIRS = tuple((i, c.opposite) for i, c in enumerate(CLASSES) if c.opposite is not None and not c.reverse)


# ------------------------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static clutter (S, S, 3) in [0, 1]: a smooth dark colour field, 4-8 soft blobs and a faint still digit.

    The faint digit means that "there is a digit" does not locate the foreground; its motion does.
    """
    field = cv2.resize(
        rng.uniform(0.05, 0.45, (4, 4, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(rng.integers(4, 9)):
        cx, cy = rng.uniform(0, size, 2)
        sigma = size * rng.uniform(0.03, 0.1)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) * np.float32(
            rng.uniform(0.2, 0.6)
        )
        field += weight[..., None] * (rng.uniform(0, 0.7, 3).astype(np.float32) - field)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    ghost = _place(_random_digit(rng), cx, cy, size * rng.uniform(0.25, 0.4), rng.uniform(-30, 30), size)
    ghost *= np.float32(rng.uniform(0.2, 0.4))  # (S, S) opacity
    field += ghost[..., None] * (_colour(rng) - field)
    return field


def _distractors(rng: np.random.Generator, size: int, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """1-3 discs on straight lines in uniformly random directions: (alpha (T, S, S), colour (3,)) each.

    Uniform directions make the process its own time reversal in distribution, so the discs carry no
    information about the order-sensitive classes.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    steps = np.arange(t, dtype=np.float32)[:, None, None]  # (T, 1, 1)
    discs = []
    for _ in range(rng.integers(1, 4)):
        radius = size * rng.uniform(0.04, 0.08)
        x0, y0 = rng.uniform(0, size, 2)
        heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.8) * size / t
        cx = (x0 + speed * np.cos(heading) * steps).astype(np.float32)  # (T, 1, 1)
        cy = (y0 + speed * np.sin(heading) * steps).astype(np.float32)
        distance = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)  # (T, S, S), float32 (float64 doubles the cost)
        alpha = np.clip(np.float32(radius + 0.5) - distance, 0.0, 1.0)  # antialiased edge, 1 px wide
        discs.append((alpha, rng.uniform(0, 1, 3).astype(np.float32)))
    return discs


def render_clip(
    class_id: int, rng: np.random.Generator | int, size: int = 64, num_frames: int = 32
) -> np.ndarray:
    """One clip of class ``class_id``: uint8 RGB (T, S, S, 3) with T = ``num_frames``, S = ``size``.

    The random draws depend only on ``rng`` and the class's process, not on the direction, so an order-
    sensitive class B with seed s is exactly class A with seed s played backwards.
    """
    if not 0 <= class_id < len(CLASSES):
        raise ConfigError(f"class_id must be in [0, {len(CLASSES)}), got {class_id}")
    if size < 16 or num_frames < 2:
        raise ConfigError(f"synthetic clips need size >= 16 and num_frames >= 2, got {size} and {num_frames}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    spec = CLASSES[class_id]
    background = _background(rng, size)  # (S, S, 3)
    alpha, colour = spec.process(rng, size, num_frames)  # (T, S, S), (3,)
    # alpha blending written as x + a * (c - x), in place: the (T, S, S, 3) passes dominate the run time
    frames = alpha[..., None] * (colour - background)  # (T, S, S, 3)
    frames += background
    for disc, disc_colour in _distractors(rng, size, num_frames):  # in front: they occlude the object
        frames += disc[..., None] * (disc_colour - frames)
    flicker = rng.uniform(-0.04, 0.04, (num_frames, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((num_frames, size, size, 1), dtype=np.float32)  # grey pixel noise
    frames += flicker + np.float32(0.03) * noise
    frames = np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames[::-1]) if spec.reverse else frames


def class_table() -> dict[str, Any]:
    """The content of ``classes.json`` that does not depend on the generation parameters."""
    return {
        "classes": [
            {
                "id": i,
                "name": c.name,
                "description": c.description,
                "order_sensitive": c.opposite is not None,
                "opposite": c.opposite,
            }
            for i, c in enumerate(CLASSES)
        ],
        "order_sensitive": list(ORDER_SENSITIVE),
        "pairs": [list(p) for p in PAIRS],
    }


def _split_counts(n: int) -> dict[str, int]:
    """Clips per split for one class: 60/20/20, at least one val and one test clip once n >= 3."""
    held = 0 if n < 3 else max(1, round(n * SPLITS["val"]))
    return {"train": n - 2 * held, "val": held, "test": held}


def _write_class(tmp: Path, class_id: int, params: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Render and write every clip of one class; returns (split, video, rawframe, flow list line) rows.

    Clip i is drawn from the seed sequence (seed, base, i) and the split assignment from (seed, base), where
    base is the first class of the clip's order pair (the class itself otherwise). So clip i of class B is
    exactly clip i of class A played backwards, in the same split: every training clip has its reversed
    twin, and an order-blind model scores exactly 50 % on the test twins. The result does not depend on
    which process writes which class.
    """
    spec = CLASSES[class_id]
    name, seed, n = spec.name, params["seed"], params["clips_per_class"]
    base = spec.opposite if spec.reverse else class_id
    counts = _split_counts(n)
    order = np.random.default_rng([seed, base]).permutation(n)
    split_of = np.repeat(list(counts), list(counts.values()))[np.argsort(order)]  # (n,) split of clip i
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, base, i])
        frames = render_clip(class_id, rng, params["size"], params["num_frames"])  # (T, S, S, 3)
        stem = f"{name}/{name}_{i:04d}"
        if params["write_videos"]:
            write_video(tmp / "videos" / f"{stem}.mp4", frames, params["fps"], params["codec"], atomic=False)
        if params["write_rawframes"]:
            write_frames(tmp / "rawframes" / stem, frames)
        if params["write_flow"]:  # named as extract_flow_list names the flow of videos/<stem>.mp4
            write_flow_folder(frames, tmp / "flow" / "videos" / stem, source=f"rendered {stem}")
        rows.append(
            (
                str(split_of[i]),
                f"videos/{stem}.mp4 {class_id}\n",
                f"rawframes/{stem} {params['num_frames']} {class_id}\n",
                f"videos/{stem} {params['num_frames'] - 1} {class_id}\n",
            )
        )
    return rows


def make_synthetic(
    out_dir: str | Path,
    clips_per_class: int = 40,
    seed: int = 0,
    size: int = 64,
    num_frames: int = 32,
    write_rawframes: bool = True,
    write_flow: bool = False,
    write_videos: bool = True,
    fps: int = 16,
    codec: str | None = None,
    overwrite: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Generate the benchmark into ``out_dir`` (atomically: temp folder, then rename) and return a summary.

    The data depends only on the parameters, not on ``workers`` (processes that write classes in parallel).
    ``write_flow`` also writes TSN flow images (DIS, ``video.data.flow``) computed from the rendered frames,
    before video compression, into ``flow/`` with the lists ``flow/{split}_flow.txt``: the layout that
    ``extract_flow_list`` gives for the video lists, at a fraction of its cost (no decoding, no second
    process pool). ``write_videos=False`` writes no ``.mp4`` files and no video lists, for a consumer that
    reads only frames and flow (the ``video-recognition`` experiment: 10 s less at 250 clips per class).
    An existing folder made with the same parameters is reused (``"reused": True``); one made otherwise
    raises ConfigError unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if clips_per_class < 1 or workers < 1:
        raise ConfigError(f"clips_per_class and workers must be at least 1, got {clips_per_class}, {workers}")
    if not (write_videos or write_rawframes):
        raise ConfigError("make_synthetic: write_videos and write_rawframes are both off; nothing to write")
    if size % 2:
        raise ConfigError(f"size must be even (video encoders halve the chroma planes), got {size}")
    render_clip(0, 0, size, num_frames)  # validates size and num_frames before any folder is made
    params = {
        "format": FORMAT,
        "clips_per_class": clips_per_class,
        "seed": seed,
        "size": size,
        "num_frames": num_frames,
        "write_rawframes": write_rawframes,
        "write_flow": write_flow,
        "write_videos": write_videos,
        "fps": fps,
        "codec": codec or default_codec(),
    }
    existing = out_dir / "classes.json"
    if out_dir.exists() and not overwrite:
        table = json.loads(existing.read_text()) if existing.is_file() else None
        # a folder written before write_flow/write_videos existed has the defaults of both
        before = {"write_flow": False, "write_videos": True}
        if table is not None and {**before, **table.get("params", {})} == params:
            return {"out_dir": str(out_dir), "reused": True, "seconds": 0.0, **_summary(table)}
        if table is not None or any(out_dir.iterdir()):
            raise ConfigError(
                f"{out_dir} already exists and was not made with these parameters {params}; "
                "pass overwrite=True (--overwrite) or choose another folder"
            )
    started = time.perf_counter()
    with atomic_write_dir(out_dir, durable=False) as tmp:
        class_ids = range(len(CLASSES))
        if workers == 1:
            per_class = [_write_class(tmp, c, params) for c in class_ids]
        else:
            # spawn, not fork: a forked child would inherit the parent's OpenCV/torch thread pools
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(CLASSES)), mp_context=context) as pool:
                per_class = list(
                    pool.map(_write_class, [tmp] * len(CLASSES), class_ids, [params] * len(CLASSES))
                )
        rows = [row for class_rows in per_class for row in class_rows]
        for split in SPLITS:
            if write_videos:
                (tmp / f"{split}.txt").write_text("".join(r[1] for r in rows if r[0] == split))
            if write_rawframes:
                (tmp / f"{split}_rawframes.txt").write_text("".join(r[2] for r in rows if r[0] == split))
            if write_flow:
                (tmp / "flow" / f"{split}_flow.txt").write_text("".join(r[3] for r in rows if r[0] == split))
        table = {
            "format": FORMAT,
            **class_table(),
            "params": params,
            "splits": {split: sum(r[0] == split for r in rows) for split in SPLITS},
        }
        (tmp / "classes.json").write_text(json.dumps(table, indent=2))
    seconds = time.perf_counter() - started
    logger.info("wrote %d clips to %s in %.1f s", len(rows), out_dir, seconds)
    return {"out_dir": str(out_dir), "reused": False, "seconds": round(seconds, 3), **_summary(table)}


def _summary(table: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_classes": len(table["classes"]),
        "order_sensitive": table["order_sensitive"],
        "splits": table["splits"],
        "params": table["params"],
    }
