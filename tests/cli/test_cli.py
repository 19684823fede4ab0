"""The CLI: help texts, and user mistakes as one line with exit code 2."""

import subprocess
import sys

import pytest

from papernotes.cli import main


def test_top_level_help_lists_fields_and_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    listing = out.split("commands:", 1)[1]  # the epilog, generated from each field's registrations
    for command in (
        "reproduce",
        "llm train",
        "llm chat",
        "video train",
        "oad stream",
        "seg eval",
        "calib rig",
    ):
        assert f"  {command} " in listing


@pytest.mark.parametrize("argv", [["reproduce"], ["llm", "train"], ["llm", "generate"], ["llm", "export"]])
def test_each_command_help_shows_its_defaults(argv, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    assert "(default:" in capsys.readouterr().out


def test_user_mistake_is_one_line_exit_2_and_debug_shows_the_traceback():
    cmd = [sys.executable, "-m", "papernotes", "reproduce", "--only", "no-such-experiment"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown experiment(s) ['no-such-experiment']" in proc.stderr
    assert "Traceback" not in proc.stderr
    for argv in ([*cmd[:3], "--debug", *cmd[3:]], [*cmd, "--debug"]):  # before or after the command
        debug = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_reproduce_list_names_the_experiments(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "llm-pretrain" in out and "llm-attention" in out


def test_video_train_offers_exactly_the_registered_recognizers():
    """--model's choices are spelled out (so that --help imports no torch); they must be the registry's."""
    import argparse

    from papernotes.cli import build_parser
    from papernotes.video.models import CONSTRUCTORS

    def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[name]

    train = subparser(subparser(build_parser(), "video"), "train")
    model = next(a for a in train._actions if a.dest == "model")
    assert sorted(model.choices) == sorted(CONSTRUCTORS)
