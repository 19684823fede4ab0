"""`papernotes llm sft | rejection-sample | dpo | chat` on tiny models; chat is driven through stdin."""

import io
import json
from collections import Counter

import pytest

from papernotes.cli import main
from papernotes.llm import chat
from papernotes.llm.chat import ChatSession
from papernotes.llm.data.chat_format import add_chat_tokens, write_chat_template
from papernotes.llm.data.tasks.instructions import PRESETS as TASK_PRESETS
from papernotes.llm.data.tasks.instructions import InstructionConfig, make_instructions, verify
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.responses import respond, score_instructions
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import load_tokenizer, train_tokenizer
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


def test_session_truncation_never_exceeds_the_context(rig, monkeypatch):
    """Every decoding call gets a prompt that, with its token budget, fits the context: plain streaming
    and chunked (accelerated) decoding, where each chunk continues from the whole context."""
    root, tokenizer = rig
    model = Llama.from_pretrained(root / "target").eval()
    calls: list[tuple[int, int]] = []  # (prompt ids fed, max_new_tokens) of each decoding call
    plain_stream = chat.stream

    def spy_stream(model, input_ids, config, stats):
        calls.append((input_ids.shape[1], config.max_new_tokens))
        return plain_stream(model, input_ids, config, stats)

    def chunked(input_ids, config):  # a lossless decoder as ChatSession sees one
        calls.append((input_ids.shape[1], config.max_new_tokens))
        return generate(model, input_ids, config)

    monkeypatch.setattr(chat, "stream", spy_stream)
    context, budget = 128, 20  # the reply budget is min(max_new_tokens, context // 2)
    long = " ".join(["garden"] * 400)
    for decoder in (None, chunked):
        session = ChatSession(
            model, tokenizer, GenerationConfig(max_new_tokens=budget), decoder=decoder, chunk=8
        )
        assert session.context == context
        for text in ("hello", long, "apple " * 30, long):
            calls.clear()
            "".join(session.reply(text))
            assert calls and all(length + new <= context for length, new in calls), calls
            if text is long:  # cut to exactly what fits: the prompt is the context less the reply budget
                assert any("cut the first" in n for n in session.notices)
                assert calls[0] == (context - budget, budget if decoder is None else 8)
        if decoder is not None:  # the last reply ran in chunks, each prompt grown by the previous chunk
            assert len(calls) > 1 and calls[-1][0] + calls[-1][1] == context


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
    assert len(result["train_losses"]) == 2
    # the reported scores are those of the saved model on the test split, as the verifiers judge them
    test = make_instructions(InstructionConfig(train_size=14, test_size=7, seed=0))["test"]
    saved = Llama.from_pretrained(out / "model").eval()
    again = score_instructions(saved, load_tokenizer(out / "model"), test).as_dict()
    scores = result["scores"]
    assert scores["samples"] == again["samples"] and scores["per_task"] == again["per_task"]
    assert scores["accuracy"] == again["accuracy"] and scores["mean_length"] == again["mean_length"]
    by_prompt = {e.prompt: e for e in test}
    assert all(s["correct"] == verify(by_prompt[s["prompt"]], s["response"]) for s in scores["samples"])
    counts = Counter(e.task for e in test)
    pooled = sum(acc * counts[task] for task, acc in scores["per_task"].items()) / len(test)
    assert scores["accuracy"] == pytest.approx(pooled)
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


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory, tiny_llama):
    """A tiny random Llama with the base's tokenizer and ChatML template (its files copied from the base)."""
    from papernotes.llm.experiments.target import default_model_path
    from papernotes.llm.model.gguf import cached_directory
    from papernotes.llm.training.sft import save_chat_model

    base_dir = cached_directory(default_model_path())
    tokenizer = load_tokenizer(base_dir)
    model = tiny_llama(tokenizer, max_position_embeddings=256)
    model.config.bos_token_id, model.config.eos_token_id = 1, 2
    return save_chat_model(model, tokenizer, tmp_path_factory.mktemp("chatml") / "model", base_dir)


def test_sft_without_model_starts_from_the_base_and_keeps_its_chat_template(
    chatml_model, tmp_path, monkeypatch
):
    from papernotes.llm import post_training_commands

    monkeypatch.setattr(post_training_commands, "default_model_path", lambda: chatml_model)
    out = tmp_path / "sft"
    argv = [
        "llm",
        "sft",
        "--out",
        str(out),
        "--lora",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--max-length",
        "160",
    ]
    assert main([*argv, *SMALL]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["base"] == str(chatml_model)
    saved = out / "model"
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"] and config["eos_token"] == "<|im_end|>"
    assert Llama.from_pretrained(saved).config.vocab_size == 49152  # ChatML's tokens exist: never resized
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 16
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": "Spell cat backwards."}], "chosen": "tac", "rejected": "cat"}
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    dpo = tmp_path / "dpo"
    argv = [
        "llm",
        "dpo",
        "--model",
        str(saved),
        "--ref",
        str(saved),
        "--pairs",
        str(pairs),
        "--out",
        str(dpo),
    ]
    assert main([*argv, "--steps", "1", "--batch-size", "2"]) == 0
    assert "<|im_start|>" in (dpo / "model" / "tokenizer_config.json").read_text()
