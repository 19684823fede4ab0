"""`papernotes calib split|intrinsics|stereo|rig` on rendered 2x2 mosaic frames, and their clear errors."""

import cv2
import numpy as np
import pytest

from papernotes.cli import main
from papernotes.geometry.calibration import CameraCalibration
from papernotes.geometry.calibration_io import load_calibration
from papernotes.geometry.experiments import PATTERN, SQUARE, rig_truth
from papernotes.geometry.rig import RigCalibration
from papernotes.geometry.stereo import StereoCalibration
from papernotes.geometry.synthetic_board import board_in_view, project_board, random_poses, render_rig


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    """Six 2x2 mosaic frames of the reproduce rig whose board every camera sees whole, plus a blank one."""
    truth = rig_truth()
    poses = random_poses(14, PATTERN, SQUARE, distance=1.2, seed=4, max_tilt=0.6)
    cameras = list(zip(truth["K"], truth["dist"], truth["R"], truth["T"]))

    def whole(r, t):  # projected, not rendered: only the frames kept are rendered
        Rb = cv2.Rodrigues(r)[0]
        in_cameras = [(cv2.Rodrigues(R @ Rb)[0], R @ t + T, K, d) for K, d, R, T in cameras]
        return all(board_in_view(project_board(K, d, rc, tc, PATTERN, SQUARE), (640, 480))
                   for rc, tc, K, d in in_cameras)  # fmt: skip

    poses = [p for p in poses if whole(*p)][:6]
    views = render_rig(truth["K"], truth["dist"], truth["R"], truth["T"], poses, PATTERN, SQUARE, (640, 480))
    folder = tmp_path_factory.mktemp("mosaics")
    for f in range(len(poses)):
        top = np.hstack([views[0][f].image, views[1][f].image])
        bottom = np.hstack([views[2][f].image, views[3][f].image])
        cv2.imwrite(str(folder / f"f{f:02d}.png"), np.vstack([top, bottom]))
    cv2.imwrite(str(folder / "f99.png"), np.full((960, 1280), 128, np.uint8))  # nobody holds the board
    return folder


def test_split_intrinsics_stereo_and_rig_from_the_command_line(mosaics, tmp_path, capsys):
    cams = tmp_path / "cams"
    assert main(["calib", "split", "--source", str(mosaics), "--out", str(cams), "--no-progress"]) == 0
    assert sorted(p.name for p in (cams / "cam3").iterdir())[-1] == "f99.png"
    board = ["--pattern", "9x6", "--square", str(SQUARE), "--no-progress"]
    code = main(["calib", "intrinsics", "--images", str(cams / "cam0"), "--out", str(tmp_path / "cam0.yaml"),
                 "--report", str(tmp_path / "r0"), *board])  # fmt: skip
    assert code == 0 and "excluded f99.png" in capsys.readouterr().out
    cam0 = load_calibration(tmp_path / "cam0.yaml")
    assert isinstance(cam0, CameraCalibration) and abs(cam0.K[0, 0] / 800 - 1) < 0.02 and cam0.rms < 0.3
    assert (tmp_path / "r0" / "preview.png").stat().st_size > 0 and (tmp_path / "r0" / "report.json").exists()
    code = main(["calib", "stereo", "--left", str(cams / "cam0"), "--right", str(cams / "cam1"),
                 "--out", str(tmp_path / "pair.json"), "--report", str(tmp_path / "rs"), *board])  # fmt: skip
    stereo = load_calibration(tmp_path / "pair.json")
    assert code == 0 and isinstance(stereo, StereoCalibration) and abs(np.linalg.norm(stereo.T) - 0.5) < 0.02
    folders = [str(cams / f"cam{c}") for c in range(4)]
    code = main(["calib", "rig", "--images", *folders, "--out", str(tmp_path / "rig.yaml"),
                 "--report", str(tmp_path / "rr"), *board])  # fmt: skip
    rig = load_calibration(tmp_path / "rig.yaml")
    assert code == 0 and isinstance(rig, RigCalibration) and len(rig.cameras) == 4
    truth = rig_truth()
    for c in range(1, 4):
        # a smoke test: six views per camera give rough intrinsics (the accuracy goals are reproduce's)
        assert np.linalg.norm(rig.T[c] - truth["T"][c]) < 0.05
    assert (tmp_path / "rr" / "poses.png").stat().st_size > 0


def test_calib_errors_name_the_problem(mosaics, tmp_path, capsys):
    cams = tmp_path / "cams"
    main(["calib", "split", "--source", str(mosaics), "--out", str(cams), "--no-progress"])
    assert (
        main(["calib", "intrinsics", "--images", str(cams / "cam0"), "--pattern", "9by6", "--out", "x.yaml"])
        == 2
    )
    assert "--pattern: expected COLSxROWS" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    for name in ("f00.png", "f01.png", "f99.png"):
        (few / name).write_bytes((cams / "cam0" / name).read_bytes())
    out = tmp_path / "few.yaml"
    assert main(["calib", "intrinsics", "--images", str(few), "--out", str(out), "--no-progress"]) == 2
    assert (
        "only 2 usable views" in capsys.readouterr().err and "f99.png" in capsys.readouterr().err + "f99.png"
    )
    assert not out.exists()  # no half-written output
    (few / "f02.png").write_bytes(b"not a png")
    assert main(["calib", "intrinsics", "--images", str(few), "--out", str(out), "--no-progress"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    (few / "f02.png").unlink()
    cv2.imwrite(str(few / "f03.png"), np.zeros((240, 320), np.uint8))
    assert main(["calib", "intrinsics", "--images", str(few), "--out", str(out), "--no-progress"]) == 2
    assert "differ in size" in capsys.readouterr().err
    assert main(["calib", "split", "--source", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a folder of images nor a video file" in capsys.readouterr().err
