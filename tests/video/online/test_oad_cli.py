"""papernotes oad make-synthetic / train / eval end to end at the tiny size, and their errors."""

import json

import numpy as np

from papernotes.cli import main


def test_make_train_eval(tmp_path, capsys):
    data = tmp_path / "streams"
    assert main(["oad", "make-synthetic", "--out", str(data), "--preset", "tiny"]) == 0
    run = tmp_path / "run"
    argv = ["oad", "train", "--model", "oadtr", "--data", str(data), "--out", str(run), "--preset", "tiny"]
    assert main([*argv, "--steps", "3", "--batch-size", "2", "--chunk", "16", "--eval", "--no-progress"]) == 0
    assert "test mAP" in capsys.readouterr().out
    result = json.loads((run / "result.json").read_text())
    assert (
        main(
            ["oad", "eval", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "m.json")]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["mAP"] == result["test"]["mAP"] and metrics["sessions"] == 2
    assert "pair0_cw" in metrics["per_class_ap"]


def test_errors_name_the_problem(tmp_path, capsys):
    data = tmp_path / "streams"
    assert main(["oad", "make-synthetic", "--out", str(data), "--preset", "tiny"]) == 0
    assert main(["oad", "eval", "--checkpoint", str(tmp_path), "--data", str(data)]) == 2
    assert "not a detector checkpoint" in capsys.readouterr().err
    info = json.loads((data / "data_info.json").read_text())
    name = info["train_session_set"][1]
    features = np.load(data / "features" / f"{name}.npy")
    features[7, 3] = np.nan
    np.save(data / "features" / f"{name}.npy", features)
    argv = [
        "oad",
        "train",
        "--model",
        "mlp",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--steps",
        "1",
    ]
    assert main(argv) == 2
    assert f"session {name}: NaN or inf in the features at frame 7" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_extract_and_stream_a_real_encoded_video(tmp_path, synthetic_dir, capsys):
    import torch

    from papernotes.video.online.commands import save_detector
    from papernotes.video.online.models import build_detector

    video = sorted((synthetic_dir / "videos").rglob("*.mp4"))[0]  # a real .mp4 (16 fps, 8 frames)
    assert (
        main(
            [
                "oad",
                "extract",
                "--video",
                str(video),
                "--out",
                str(tmp_path / "f"),
                "--size",
                "32",
                "--fps",
                "4",
            ]
        )
        == 0
    )
    features = np.load(tmp_path / "f" / f"{video.stem}.npy")
    assert features.shape == (2, 512)  # 8 frames at 16 fps in chunks of 4 frames
    torch.manual_seed(0)
    model = build_detector("oadtr", "tiny", feature_dim=512, num_classes=3).eval()
    save_detector(model, "oadtr", tmp_path / "det", {}, class_names=["bg", "left", "right"])
    capsys.readouterr()
    argv = ["oad", "stream", "--checkpoint", str(tmp_path / "det"), "--video", str(video), "--size", "32"]
    assert main([*argv, "--out", str(tmp_path / "timeline.png")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == 2 and info["frames"][0]["class"] in ("bg", "left", "right")
    assert (tmp_path / "timeline.png").stat().st_size > 1000
    # the streamed probabilities are the offline scores of the extracted features
    with torch.no_grad():
        expected = torch.softmax(model(torch.as_tensor(features)[None])[0], -1).max(-1).values
    assert [f["p"] for f in info["frames"]] == [round(float(p), 4) for p in expected]
    model16 = build_detector("mlp", "tiny")
    save_detector(model16, "mlp", tmp_path / "small", {})
    assert main(["oad", "stream", "--checkpoint", str(tmp_path / "small"), "--video", str(video)]) == 2
    assert "gives 512-dim features" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_fit_its_config_names_the_tensor(tmp_path):
    import pytest

    from papernotes.errors import ShapeMismatchError
    from papernotes.video.online.commands import load_detector, save_detector
    from papernotes.video.online.models import build_detector

    save_detector(build_detector("mlp", "tiny"), "mlp", tmp_path / "det", {})
    meta = json.loads((tmp_path / "det" / "detector.json").read_text())
    meta["config"]["hidden"] = 16
    (tmp_path / "det" / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ShapeMismatchError, match=r"tensor net.0.weight has shape \(32, 16\)"):
        load_detector(tmp_path / "det")
