"""The llm commands run exactly as the README shows them, on the tiny preset."""

import json

import pytest
import torch
import transformers

from papernotes.cli import main
from papernotes.llm.model.llama import Llama

TINY = [
    "--model",
    "tiny",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--max-bytes",
    "150000",
    "--vocab-size",
    "300",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["llm", "train", "--out", str(out), "--steps", "4", "--checkpoint-every", "2", *TINY]) == 0
    return out


def test_train_writes_a_resumable_checkpoint_and_an_hf_model_dir(run_dir):
    info = json.loads((run_dir / "train_result.json").read_text())
    assert info["steps"] == 4 and len(info["train_losses"]) == 4
    assert (run_dir / "checkpoint").is_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (run_dir / "model" / name).is_file()


def test_resume_continues_from_the_checkpoint(run_dir, capsys):
    assert (
        main(
            [
                "llm",
                "train",
                "--out",
                str(run_dir),
                "--steps",
                "6",
                "--resume",
                "--checkpoint-every",
                "2",
                *TINY,
            ]
        )
        == 0
    )
    info = json.loads((run_dir / "train_result.json").read_text())
    assert len(info["train_losses"]) == 6


def test_generate_prints_the_prompt_and_a_continuation(run_dir, capsys):
    argv = [
        "llm",
        "generate",
        "--model",
        str(run_dir / "model"),
        "--prompt",
        "def fibonacci(n):",
        "--max-new-tokens",
        "8",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def fibonacci(n):")
    assert "tokens/s" in captured.err


def test_export_writes_a_directory_transformers_loads_with_equal_logits(run_dir, tmp_path):
    assert main(["llm", "export", "--run", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    ours = Llama.from_pretrained(tmp_path / "hf").eval()
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, ours.config.vocab_size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.decode(tok.encode("x = 1", add_special_tokens=False)) == "x = 1"


def test_export_to_bfloat16_halves_the_weights(run_dir, tmp_path):
    assert (
        main(
            [
                "llm",
                "export",
                "--run",
                str(run_dir / "model"),
                "--out",
                str(tmp_path / "bf"),
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    assert Llama.from_pretrained(tmp_path / "bf").lm_head.weight.dtype == torch.bfloat16


def test_generate_with_a_missing_model_dir_exits_2(tmp_path, capsys):
    assert main(["llm", "generate", "--model", str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


@pytest.fixture(scope="module")
def decoding_dirs(run_dir):
    """Medusa heads, MTP modules and a draft beside the model, the layout generate --method reads."""
    import shutil

    model = run_dir / "model"
    common = [
        "--model",
        str(model),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--max-bytes",
        "150000",
    ]
    assert main(["llm", "train-medusa", *common, "--out", str(run_dir / "medusa")]) == 0
    assert main(["llm", "train-mtp", *common, "--out", str(run_dir / "mtp")]) == 0
    if not (run_dir / "draft").exists():
        shutil.copytree(model, run_dir / "draft")  # a draft only needs the same vocabulary
    return run_dir


@pytest.mark.parametrize("method", ["speculative", "lookup", "medusa", "mtp"])
def test_generate_methods_reproduce_plain_greedy_text(decoding_dirs, method, capsys):
    base = [
        "llm",
        "generate",
        "--model",
        str(decoding_dirs / "model"),
        "--prompt",
        "import os\n",
        "--max-new-tokens",
    ]
    assert main([*base, "12"]) == 0
    plain = capsys.readouterr().out
    assert main([*base, "12", "--method", method, "--stats"]) == 0
    captured = capsys.readouterr()
    assert captured.out == plain
    assert f"[{method}:" in captured.err and "τ =" in captured.err


def test_generate_with_a_missing_draft_names_the_folder(run_dir, tmp_path, capsys):
    argv = ["llm", "generate", "--model", str(run_dir / "model"), "--method", "speculative"]
    assert main([*argv, "--draft", str(tmp_path / "nodraft")]) == 2
    assert "nodraft does not exist" in capsys.readouterr().err
