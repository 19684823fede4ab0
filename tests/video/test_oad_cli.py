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
