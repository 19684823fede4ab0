"""`papernotes llm sft | rejection-sample | dpo | chat` on tiny models; chat is driven through stdin."""

import io
import json

import pytest

from papernotes.cli import main
from papernotes.llm.chat import ChatSession
from papernotes.llm.data.chat_format import add_chat_tokens, write_chat_template
from papernotes.llm.data.tasks.instructions import PRESETS as TASK_PRESETS
from papernotes.llm.data.tasks.instructions import make_instructions
from papernotes.llm.generation.generate import GenerationConfig
from papernotes.llm.generation.responses import respond
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import train_tokenizer
from papernotes.llm.training.pretrain import save_model_dir

SPLITS = make_instructions(TASK_PRESETS["tiny"])
SMALL = ["--train-size", "14", "--eval-size", "7"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory, tiny_llama):
    """<root>/target (a tiny chat model) and <root>/draft beside it; plus the tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = train_tokenizer((t for e in SPLITS["train"] for t in (e.prompt, e.answer)), vocab_size=400)
    add_chat_tokens(tokenizer)
    for name, seed, layers in (("target", 0, 2), ("draft", 1, 1)):
        model = tiny_llama(tokenizer, seed, num_hidden_layers=layers, max_position_embeddings=128)
        save_model_dir(model, tokenizer, root / name)
        write_chat_template(root / name)
    return root, tokenizer


def _chat(monkeypatch, capsys, model_dir, text, *extra):
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["llm", "chat", "--model", str(model_dir), "--max-new-tokens", "12", *extra]) == 0
    return capsys.readouterr().out


def test_chat_streams_replies_and_handles_commands(rig, monkeypatch, capsys):
    root, tokenizer = rig
    out = _chat(
        monkeypatch,
        capsys,
        root / "target",
        "What is 2 plus 2?\n/stats\n/reset\n/stats\n",
        "--method",
        "plain",
    )
    lines = out.split("\n")  # a random model's reply may hold a "\r"
    assert lines[0].startswith("chat (plain decoding, context 128 tokens)")
    model = Llama.from_pretrained(root / "target").eval()
    expected = respond(
        model, tokenizer, [[{"role": "user", "content": "What is 2 plus 2?"}]], max_new_tokens=12
    )
    assert lines[1].strip() == expected[0][0].text  # the streamed reply is the greedy reply
    assert lines[2].startswith("[1 turns, ") and "plain decoding, 2 messages kept" in lines[2]
    assert lines[3] == "[conversation reset]" and "0 messages kept" in lines[4]


def test_chat_uses_a_draft_beside_the_model_losslessly(rig, monkeypatch, capsys):
    root, _ = rig
    script = "Sort in ascending order: 3, 1, 2\nAnd reverse apple?\n"
    plain = _chat(monkeypatch, capsys, root / "target", script, "--method", "plain").split("\n")
    fast = _chat(monkeypatch, capsys, root / "target", script).split("\n")
    assert fast[0].startswith("chat (speculative decoding")
    assert fast[1:] == plain[1:]  # greedy speculative replies are the plain replies, turn by turn
    assert sum(len(line.strip()) for line in plain[1:]) > 10  # and they are not empty


def test_chat_drops_old_turns_when_the_context_is_full(rig, monkeypatch, capsys):
    root, _ = rig
    long = " ".join(["apple lemon river garden"] * 12)
    out = _chat(monkeypatch, capsys, root / "target", f"hello\n{long}\n{long} {long}\n", "--method", "plain")
    assert "[dropped the oldest turn to fit the context]" in out


def test_session_truncation_never_exceeds_the_context(rig):
    root, tokenizer = rig
    model = Llama.from_pretrained(root / "target").eval()
    session = ChatSession(model, tokenizer, GenerationConfig(max_new_tokens=20))
    text = "".join(session.reply(" ".join(["garden"] * 400)))
    assert any("cut the first" in n for n in session.notices) and isinstance(text, str)


def test_sft_rejection_sampling_and_dpo_from_the_command_line(rig, tmp_path, capsys):
    root, _ = rig
    out = tmp_path / "sft"
    args = [
        "llm",
        "sft",
        "--model",
        str(root / "target"),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "2",
    ]
    assert main([*args, "--max-length", "128", *SMALL]) == 0
    result = json.loads((out / "result.json").read_text())
    assert len(result["train_losses"]) == 2 and 0 <= result["scores"]["accuracy"] <= 1
    config = json.loads((out / "model" / "tokenizer_config.json").read_text())
    assert "<|start_header_id|>" in config["chat_template"]
    lora_out = tmp_path / "lora"
    args = ["llm", "sft", "--model", str(root / "target"), "--out", str(lora_out), "--lora", "--steps", "2"]
    assert main([*args, "--batch-size", "2", "--max-length", "128", *SMALL]) == 0
    assert (lora_out / "adapter" / "adapter_config.json").is_file() and (
        lora_out / "model" / "config.json"
    ).is_file()
    rs = tmp_path / "rs"
    args = [
        "llm",
        "rejection-sample",
        "--model",
        str(out / "model"),
        "--out",
        str(rs),
        "--k",
        "2",
        "--prompts",
        "4",
    ]
    assert main([*args, "--max-new-tokens", "6", *SMALL]) == 0
    assert (rs / "sft.jsonl").exists() and (rs / "pairs.jsonl").exists()
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": e.prompt}], "chosen": e.answer, "rejected": "no"}
        for e in SPLITS["train"][:4]
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dpo = tmp_path / "dpo"
    args = ["llm", "dpo", "--model", str(out / "model"), "--ref", str(out / "model"), "--pairs", str(pairs)]
    assert main([*args, "--out", str(dpo), "--steps", "2", "--batch-size", "2"]) == 0
    assert "preference accuracy" in capsys.readouterr().out and (dpo / "model" / "config.json").is_file()


def test_post_training_errors_are_clear(rig, tmp_path, capsys):
    root, _ = rig
    base = ["--out", str(tmp_path / "o"), "--steps", "1", "--batch-size", "1"]
    assert main(["llm", "dpo", "--model", str(root / "target"), "--ref", str(root / "draft"), *base]) == 2
    assert "does not fit the policy" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = [
        "llm",
        "dpo",
        "--model",
        str(root / "target"),
        "--ref",
        str(root / "target"),
        "--pairs",
        str(empty),
    ]
    assert main([*args, *base]) == 2
    assert "holds no preference pairs" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}) + "\n"
    )
    args = ["llm", "sft", "--model", str(root / "target"), "--data", str(bad), *base]
    assert main(args) == 2
    assert "roles must alternate" in capsys.readouterr().err
