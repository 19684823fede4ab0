"""papernotes seg eval on PNG folders: the same numbers as the metrics, figures, and clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from papernotes.cli import main
from papernotes.metrics.segmentation import segmentation_metrics


def _write(folder, name, array, palette=False):
    folder.mkdir(exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    if palette:  # an indexed PNG, as Cityscapes / VOC ship them
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(folder / name)


def test_seg_eval_matches_the_metrics_and_writes_figures(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for i in range(3):
        gt = rng.integers(0, 4, (20, 30))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.7, gt % 4, rng.integers(0, 4, gt.shape))
        pred[gt == 255] = 0
        _write(tmp_path / "gt", f"img{i}.png", gt, palette=i == 0)
        _write(tmp_path / "pred", f"img{i}.png", pred)
        gts.append(gt), preds.append(pred)
    (tmp_path / "names.txt").write_text("road\ncar\nsky\nperson\n")
    argv = [
        "seg",
        "eval",
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--num-classes",
        "4",
    ]
    assert main([*argv, "--class-names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "out")]) == 0
    assert "person" in capsys.readouterr().out
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = segmentation_metrics(np.stack(preds), np.stack(gts), 4)
    assert written["mIoU"] == pytest.approx(expected["mIoU"]) and written["PA"] == pytest.approx(
        expected["PA"]
    )
    assert (tmp_path / "out" / "iou.png").stat().st_size > 1000 and (
        tmp_path / "out" / "confusion.png"
    ).exists()


def test_seg_eval_errors_name_the_files(tmp_path, capsys):
    _write(tmp_path / "gt", "a.png", np.zeros((4, 4)))
    _write(tmp_path / "gt", "b.png", np.zeros((4, 4)))
    _write(tmp_path / "pred", "a.png", np.zeros((4, 5)))
    argv = [
        "seg",
        "eval",
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--num-classes",
        "2",
    ]
    assert main(argv) == 2
    assert "no prediction for ['b.png']" in capsys.readouterr().err
    _write(tmp_path / "pred", "b.png", np.zeros((4, 4)))
    assert main(argv) == 2
    assert "a.png: prediction (4, 5) and ground truth (4, 4) differ in size" in capsys.readouterr().err
    _write(tmp_path / "pred", "a.png", np.full((4, 4), 9))
    assert main(argv) == 2
    assert "a.png: prediction label 9 is outside 0..1" in capsys.readouterr().err
