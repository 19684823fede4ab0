"""The video data commands run exactly as the README shows them, on a tiny size."""

import json

from papernotes.cli import main
from papernotes.video.data.datasets import read_rawframe_list, read_video_list


def test_make_synthetic_then_flow_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "synthetic"
    argv = [
        "video",
        "make-synthetic",
        "--out",
        str(data),
        "--clips",
        "80",
        "--size",
        "32",
        "--num-frames",
        "8",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_classes"] == 16 and len(summary["order_sensitive"]) == 12
    entries = read_video_list(data / "val.txt")
    assert len(entries) == 16  # 80 clips -> 5 per class -> one validation clip per class
    flow_argv = ["video", "flow", "--list", str(data / "val.txt"), "--out", str(tmp_path / "flow")]
    assert main([*flow_argv, "--max-frames", "4", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["extracted"] == 16
    flow_list = read_rawframe_list(tmp_path / "flow" / "val_flow.txt")
    assert [e.num_frames for e in flow_list] == [3] * 16  # one flow field per consecutive frame pair
    assert main([*flow_argv, "--max-frames", "4", "--no-progress"]) == 0  # resumable: all skipped
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] == 16 and again["extracted"] == 0


def test_bad_clip_count_and_missing_list_exit_2(tmp_path, capsys):
    assert main(["video", "make-synthetic", "--out", str(tmp_path / "d"), "--clips", "0"]) == 2
    assert main(["video", "flow", "--list", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "--clips" in err and "nope.txt" in err
