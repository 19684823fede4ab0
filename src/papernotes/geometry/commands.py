"""What ``papernotes calib split|intrinsics|stereo|rig`` do: read folders, calibrate, write a report.

Every command writes the calibration (YAML or JSON by suffix) atomically and, with ``--report DIR``, a
``report.json`` of per-view and per-camera reprojection errors plus a preview image: the first usable view
undistorted (intrinsics), the first pair rectified with guide rows (stereo), or the camera poses (rig).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from papernotes.core.files import atomic_write_file
from papernotes.errors import ConfigError, DataError
from papernotes.geometry.calibration import CameraCalibration, calibrate_camera, read_image
from papernotes.geometry.calibration_io import load_calibration, save_calibration
from papernotes.geometry.mosaic import image_files, split_recording
from papernotes.geometry.plots import draw_cameras
from papernotes.geometry.rig import calibrate_rig
from papernotes.geometry.stereo import calibrate_stereo, rectify_images, stereo_from_calibrations


def parse_grid(text: str, option: str = "--pattern", example: str = "9x6", least: int = 2) -> tuple[int, int]:
    """'9x6' -> (9, 6); an error naming ``option`` unless both numbers are at least ``least``."""
    meaning = "COLSxROWS inner corners" if option == "--pattern" else "ROWSxCOLS"
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{option}: expected {meaning} such as {example}, got {text!r}") from None
    if a < least or b < least:
        raise ConfigError(f"{option}: need at least {least}x{least}, got {text!r}")
    return a, b


def _images(folder: Path) -> tuple[list[str], list[np.ndarray]]:
    files = image_files(folder)
    return [p.name for p in files], [read_image(p) for p in files]


def _write_report(report_dir: Path | None, report: dict[str, Any], preview: np.ndarray | None) -> None:
    if report_dir is None:
        return
    report_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write_file(report_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    if preview is not None:
        _, encoded = cv2.imencode(".png", preview)
        with atomic_write_file(report_dir / "preview.png") as tmp:
            tmp.write_bytes(encoded.tobytes())


def split_command(args: argparse.Namespace) -> list[Path]:
    layout = parse_grid(args.layout, "--layout", "2x2", least=1)
    return split_recording(args.source, args.out, layout, args.every, progress=not args.no_progress)


def intrinsics_command(args: argparse.Namespace) -> CameraCalibration:
    pattern = parse_grid(args.pattern)
    names, images = _images(args.images)
    with tqdm(total=len(images), desc="detect", unit="image", disable=args.no_progress) as bar:
        calib = calibrate_camera(
            images, pattern, args.square, names, args.max_view_error, args.fix_k3, progress=bar.update
        )
    save_calibration(calib, args.out)
    first = next(n for n in names if n in calib.view_errors)
    undistorted = cv2.undistort(images[names.index(first)], calib.K, calib.dist)
    preview = np.hstack([images[names.index(first)], undistorted])
    _write_report(args.report, _camera_report(calib), preview)
    return calib


def _camera_report(calib: CameraCalibration) -> dict[str, Any]:
    return {
        "rms_px": calib.rms,
        "view_errors_px": calib.view_errors,
        "excluded": calib.excluded,  # view -> why (no board, a grid shifted onto the board's edge, ...)
        "camera_matrix": calib.K.tolist(),
        "dist_coeffs": calib.dist.tolist(),
    }


def _load_camera(path: Path) -> CameraCalibration:
    calib = load_calibration(path)
    if not isinstance(calib, CameraCalibration):
        raise DataError(f"{path}: expected a one-camera calibration, found a {type(calib).__name__}")
    return calib


def _intrinsics_for(path: Path | None, images, names, pattern, square) -> CameraCalibration:
    if path is not None:
        return _load_camera(path)
    return calibrate_camera(images, pattern, square, names)


def stereo_command(args: argparse.Namespace):
    pattern = parse_grid(args.pattern)
    left_names, left = _images(args.left)
    right_names, right = _images(args.right)
    if left_names != right_names:
        missing = sorted(set(left_names) ^ set(right_names))
        raise DataError(
            f"{args.left} and {args.right} must hold the same file names (pairs); unmatched: {missing[:5]}"
        )
    left_calib = _intrinsics_for(args.left_calib, left, left_names, pattern, args.square)
    right_calib = _intrinsics_for(args.right_calib, right, right_names, pattern, args.square)
    if args.left_calib is None and args.right_calib is None:  # both just searched every image: pair them
        stereo = stereo_from_calibrations(left_calib, right_calib, pattern, args.square)
    else:
        stereo = calibrate_stereo(
            left_calib, right_calib, left, right, pattern, args.square, names=left_names
        )
    save_calibration(stereo, args.out)
    a, b = rectify_images(
        stereo, left[left_names.index(stereo.pairs[0])], right[left_names.index(stereo.pairs[0])]
    )
    preview = cv2.cvtColor(np.hstack([a, b]), cv2.COLOR_GRAY2BGR)
    for y in range(0, preview.shape[0], 32):  # rectified: a scene point sits on the same row in both halves
        cv2.line(preview, (0, y), (preview.shape[1] - 1, y), (0, 200, 0), 1)
    report = {
        "rms_px": stereo.rms,
        "pairs": stereo.pairs,
        "excluded": stereo.excluded,
        "R": stereo.R.tolist(),
        "T": stereo.T.tolist(),
        "baseline": float(np.linalg.norm(stereo.T)),
        "left": _camera_report(stereo.left),
        "right": _camera_report(stereo.right),
    }
    _write_report(args.report, report, preview)
    return stereo


def rig_command(args: argparse.Namespace):
    pattern = parse_grid(args.pattern)
    folders = list(args.images)
    listing = [{p.name: p for p in image_files(folder)} for folder in folders]
    frame_names = sorted(set().union(*listing))
    total = len(frame_names) * len(folders)
    with tqdm(total=total, desc="detect", unit="image", disable=args.no_progress) as bar:
        images = [[read_image(files[n]) if n in files else None for n in frame_names] for files in listing]
        intrinsics = None
        if args.intrinsics:
            if len(args.intrinsics) != len(folders):
                raise ConfigError(f"--intrinsics: {len(args.intrinsics)} files for {len(folders)} cameras")
            intrinsics = [_load_camera(p) for p in args.intrinsics]
        rig = calibrate_rig(
            images,
            pattern,
            args.square,
            args.reference,
            frame_names,
            intrinsics=intrinsics,
            progress=bar.update,
        )
    save_calibration(rig, args.out)
    report = {
        "rms_px": rig.rms,
        "camera_rms_px": rig.camera_errors,
        "method": rig.method,
        "excluded": rig.excluded,
        "frames": rig.frames,
        "T": [np.asarray(t).tolist() for t in rig.T],
    }
    _write_report(args.report, report, None)
    if args.report is not None:
        pose_figure(rig, args.report / "poses.png")
    return rig


def pose_figure(rig, path: Path) -> Path:
    """Camera centres and optical axes in the reference camera's frame, from above."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    scale = max([float(np.linalg.norm(t)) for t in rig.T] + [1e-3]) * 0.3
    draw_cameras(ax, rig.R, rig.T, (0, 2), "o", axis_length=scale, labels=True)
    ax.set_xlabel("x (board units)")
    ax.set_ylabel("z (board units)")
    ax.set_aspect("equal")
    ax.margins(0.3)
    ax.set_title(f"rig from above (reference camera {rig.reference}); RMS {rig.rms:.3f} px")
    with atomic_write_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
