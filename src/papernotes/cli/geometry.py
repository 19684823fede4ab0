"""``papernotes calib ...``: multi-camera calibration commands (logic in ``geometry.commands``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from papernotes.cli.common import Formatter, echo

PATTERN_HELP = "inner corners per row x per column (a 10x7-square board has 9x6)"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    calib = sub.add_parser(
        "calib", parents=[common], help="Multi-camera chessboard calibration", formatter_class=Formatter
    )
    calib_sub = calib.add_subparsers(dest="calib_command", metavar="COMMAND", required=True)

    sp = calib_sub.add_parser(
        "split",
        parents=[common],
        help="split four-way (mosaic) recorder frames into per-camera images",
        description="Split every frame of a video file or a folder of images holding a ROWSxCOLS grid of "
        "cameras into <out>/cam0, cam1, ... (row by row), one PNG per frame named after it, so that the "
        "camera folders pair up by file name for 'calib rig'.",
        formatter_class=Formatter,
    )
    sp.add_argument("--source", type=Path, required=True, help="video file or folder of mosaic frames")
    sp.add_argument("--out", type=Path, required=True, help="folder for cam<k>/ sub-folders")
    sp.add_argument("--layout", default="2x2", help="ROWSxCOLS cameras in each frame")
    sp.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sp.set_defaults(func=_split)

    def board_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pattern", default="9x6", help=PATTERN_HELP)
        p.add_argument("--square", type=float, default=0.025, help="square size; sets the unit of T (metres)")
        p.add_argument("--out", type=Path, required=True, help="calibration file (.yaml/.yml or .json)")
        p.add_argument("--report", type=Path, default=None, help="folder for report.json and a preview")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    it = calib_sub.add_parser(
        "intrinsics",
        parents=[common],
        help="one camera's K and distortion from chessboard views",
        description="Detect the board in every image of the folder (views without one are listed and "
        "skipped), run cv2.calibrateCamera, and write camera_matrix, dist_coeffs, image_size and rms. The "
        "report holds each view's reprojection error and an undistorted preview.",
        formatter_class=Formatter,
    )
    it.add_argument("--images", type=Path, required=True, help="folder of one camera's board images")
    board_args(it)
    it.add_argument("--max-view-error", type=float, default=None, help="reject views above this RMS (px)")
    it.add_argument("--fix-k3", action="store_true", help="hold k3 at 0 (mild lenses, few views)")
    it.set_defaults(func=_intrinsics)

    st = calib_sub.add_parser(
        "stereo",
        parents=[common],
        help="a synchronised pair's R, T, E, F and rectification",
        description="Pair the two folders' images by file name, calibrate each camera (or load "
        "--left-calib/--right-calib), then cv2.stereoCalibrate with the intrinsics fixed and "
        "cv2.stereoRectify. The report holds a rectified preview with guide rows.",
        formatter_class=Formatter,
    )
    st.add_argument("--left", type=Path, required=True, help="folder of the left camera's images")
    st.add_argument("--right", type=Path, required=True, help="folder of the right camera's images")
    st.add_argument("--left-calib", type=Path, default=None, help="left intrinsics file instead")
    st.add_argument("--right-calib", type=Path, default=None, help="right intrinsics file instead")
    board_args(st)
    st.set_defaults(func=_stereo)

    rg = calib_sub.add_parser(
        "rig",
        parents=[common],
        help="every camera's pose relative to a reference camera",
        description="One folder per camera, frames paired by file name (as 'calib split' writes them). "
        "Each camera is calibrated from its own views (or --intrinsics files), then the poses come from "
        "cv2.calibrateMultiview (or pairwise stereo along a spanning tree on older OpenCV) refined by a "
        "joint bundle adjustment. The report lists per-camera errors and draws the poses.",
        formatter_class=Formatter,
    )
    rg.add_argument("--images", type=Path, nargs="+", required=True, help="one folder per camera")
    rg.add_argument(
        "--intrinsics", type=Path, nargs="+", default=None, help="one calibration file per camera"
    )
    rg.add_argument("--reference", type=int, default=0, help="camera whose frame the poses are given in")
    board_args(rg)
    rg.set_defaults(func=_rig)


def _split(args: argparse.Namespace) -> int:
    from papernotes.geometry.commands import split_command

    folders = split_command(args)
    echo(f"split into {len(folders)} cameras: {', '.join(str(f) for f in folders)}")
    return 0


def _intrinsics(args: argparse.Namespace) -> int:
    from papernotes.geometry.commands import intrinsics_command

    calib = intrinsics_command(args)
    K = calib.K
    echo(f"{len(calib.view_errors)} views used, {len(calib.excluded)} excluded; RMS {calib.rms:.3f} px")
    echo(f"fx {K[0, 0]:.2f}  fy {K[1, 1]:.2f}  cx {K[0, 2]:.2f}  cy {K[1, 2]:.2f}")
    echo(f"dist (k1 k2 p1 p2 k3) {np.round(calib.dist, 5)}")
    for name, error in sorted(calib.view_errors.items(), key=lambda kv: -kv[1])[:5]:
        echo(f"  {name}: {error:.3f} px")
    for name, why in calib.excluded.items():
        echo(f"  excluded {name}: {why}")
    echo(f"wrote {args.out}")
    return 0


def _stereo(args: argparse.Namespace) -> int:
    from papernotes.geometry.commands import stereo_command

    stereo = stereo_command(args)
    angle = float(np.rad2deg(np.arccos(np.clip((np.trace(stereo.R) - 1) / 2, -1, 1))))
    echo(f"{len(stereo.pairs)} pairs used, {len(stereo.excluded)} excluded; RMS {stereo.rms:.3f} px")
    echo(f"baseline {np.linalg.norm(stereo.T):.4f} (board units), rotation {angle:.3f} degrees")
    echo(f"wrote {args.out}")
    return 0


def _rig(args: argparse.Namespace) -> int:
    from papernotes.geometry.commands import rig_command

    rig = rig_command(args)
    echo(f"{len(rig.cameras)} cameras, {len(rig.frames)} frames ({rig.method}); RMS {rig.rms:.3f} px")
    for c, (T, error) in enumerate(zip(rig.T, rig.camera_errors)):
        echo(f"  camera {c}: T {np.round(np.asarray(T), 4)}  RMS {error:.3f} px")
    echo(f"wrote {args.out}")
    return 0
