"""`papernotes reproduce` run as the README shows it (every experiment), at a tiny size; the LLM results."""

import json

import pytest

from papernotes.cli import main
from papernotes.geometry import experiments as geometry_reproduce
from papernotes.llm.experiments import decoding as reproduce_decoding
from papernotes.llm.experiments import peft as reproduce_peft
from papernotes.llm.experiments import post_training as reproduce_post_training
from papernotes.llm.experiments import pretrain as reproduce
from papernotes.llm.model.llama import Llama
from papernotes.video.experiments import online_detection as online_reproduce
from papernotes.video.experiments import recognition as video_reproduce


@pytest.fixture
def tiny_sizes(monkeypatch):
    monkeypatch.setitem(
        reproduce.PRETRAIN_SIZES,
        "quick",
        {
            "model": "tiny",
            "steps": 3,
            "compare_at": 2,
            "batch_size": 2,
            "seq_len": 16,
            "max_bytes": 100_000,
            "vocab_size": 300,
        },
    )
    monkeypatch.setitem(
        reproduce_decoding.DECODING_SIZES,
        "quick",
        {
            "draft_model": "tiny",
            "draft_steps": 2,
            "medusa_steps": 2,
            "mtp_steps": 2,
            "batch_size": 2,
            "num_draft_tokens": 3,
            "num_prompts": 2,
            "prompt_len": 8,
            "max_new_tokens": 8,
        },
    )
    monkeypatch.setitem(
        reproduce_peft.PEFT_SIZES,
        "quick",
        {
            "domain_steps": 2,
            "steps": 2,
            "batch_size": 2,
            "train_size": 24,
            "max_slots": 3,
            "test_size": 3,
            "max_new_tokens": 6,
            "lora_ranks": [2, 4],
            "prefix_lengths": [2],
            "latency_prompts": 1,
            "latency_new_tokens": 3,
            "latency_repeats": 1,
        },
    )
    monkeypatch.setitem(
        reproduce.ATTENTION_SIZES, "quick", {"seq_lens": [64, 128], "num_heads": 2, "repeats": 1}
    )
    # the video experiment has its own test (tests/video/test_reproduce.py); here it only has to run
    monkeypatch.setitem(video_reproduce.VIDEO_SIZES, "quick", video_reproduce.VIDEO_SIZES["tiny"])
    monkeypatch.setitem(online_reproduce.ONLINE_SIZES, "quick", online_reproduce.ONLINE_SIZES["tiny"])
    monkeypatch.setitem(
        reproduce_post_training.POST_SIZES, "quick", reproduce_post_training.POST_SIZES["tiny"]
    )
    monkeypatch.setitem(geometry_reproduce.CALIB_SIZES, "quick", geometry_reproduce.CALIB_SIZES["tiny"])


def _results(out):
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run, json.loads((run / "results.json").read_text())


def test_reproduce_llm_writes_report_figures_and_a_cached_hf_model(tiny_sizes, tmp_path, capsys):
    out, cache = tmp_path / "reports", tmp_path / "cache"
    argv = ["reproduce", "--out", str(out), "--cache-dir", str(cache)]  # every experiment
    assert main(argv) == 0
    run, results = _results(out)
    assert results["experiments"]["video-recognition"]["status"] == "ok"
    assert results["experiments"]["online-detection"]["status"] == "ok"
    assert results["experiments"]["calibration"]["status"] == "ok"
    pre = results["experiments"]["llm-pretrain"]
    assert pre["status"] == "ok", pre.get("traceback")
    assert set(pre["metrics"]["runs"]) == {"fp32", "bf16", "fp16"}
    runs = pre["metrics"]["runs"]
    assert [len(runs[p]["train_losses"]) for p in ("fp32", "bf16", "fp16")] == [3, 3, 2]
    assert all(
        2 in [step for step, _ in r["val_losses"]] for r in runs.values()
    )  # the common comparison step
    assert (run / "llm-pretrain" / "loss_curves.png").stat().st_size > 1000
    att = results["experiments"]["llm-attention"]
    assert att["status"] == "ok", att.get("traceback")
    assert {r["backend"] for r in att["metrics"]["rows"]} == {"naive", "sdpa", "flash"}
    dec = results["experiments"]["llm-decoding"]
    assert dec["status"] == "ok", dec.get("traceback")
    greedy = {r["method"]: r for r in dec["metrics"]["rows"] if r["temperature"] == 0}
    assert {"plain", "speculative", "lookup", "medusa", "mtp"} <= set(greedy)
    assert all(r["matches_plain"] for r in greedy.values())  # every method is lossless, HF's included
    assert (run / "llm-decoding" / "decoding_speedup.png").is_file()
    peft = results["experiments"]["llm-peft"]
    assert peft["status"] == "ok", peft.get("traceback")
    runs = {r["run"]: r for r in peft["metrics"]["runs"]}
    assert list(runs) == ["full", "lora r=2", "lora r=4", "prefix L=2"]
    assert runs["lora r=2"]["trainable_parameters"] * 2 == runs["lora r=4"]["trainable_parameters"]
    assert runs["prefix L=2"]["stored_parameters"] < runs["prefix L=2"]["trainable_parameters"]  # MLP dropped
    assert (run / "llm-peft" / "peft_comparison.png").is_file()
    post = results["experiments"]["llm-post-training"]
    assert post["status"] == "ok", post.get("traceback")
    assert [r["stage"] for r in post["metrics"]["stages"]][:3] == ["base", "sft", "rs-sft"]
    assert (run / "llm-post-training" / "post_training.png").is_file()
    assert "llm-pretrain" in (run / "index.html").read_text()
    assert "pre-training by precision mode" in capsys.readouterr().out
    model = Llama.from_pretrained(cache / "llm" / "target")  # cached for the decoding and PEFT issues
    assert model.config.vocab_size == 300

    # a second run reuses the cached models and measurements; --no-cache retrains
    for extra, cached in (([], True), (["--no-cache"], False)):
        for p in out.iterdir():
            p.rename(tmp_path / f"old-{p.name}-{cached}")
        assert (
            main(
                ["reproduce", "--only", "llm-pretrain", "--out", str(out), "--cache-dir", str(cache), *extra]
            )
            == 0
        )
        assert _results(out)[1]["experiments"]["llm-pretrain"]["metrics"]["cached"] is cached
