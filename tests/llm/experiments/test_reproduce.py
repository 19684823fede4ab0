"""`papernotes reproduce --size tiny` run as the README shows it (every experiment); the LLM results."""

import json

from papernotes.cli import main
from papernotes.core.precision import native_bf16
from papernotes.llm.model.llama import Llama


def _results(out):
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run, json.loads((run / "results.json").read_text())


def test_reproduce_llm_writes_report_figures_and_a_cached_hf_model(tmp_path, capsys):
    out, cache = tmp_path / "reports", tmp_path / "cache"
    argv = ["reproduce", "--size", "tiny", "--out", str(out), "--cache-dir", str(cache)]  # every experiment
    assert main(argv) == 0
    run, results = _results(out)
    assert results["experiments"]["video-recognition"]["status"] == "ok"
    assert results["experiments"]["online-detection"]["status"] == "ok"
    assert results["experiments"]["calibration"]["status"] == "ok"
    pre = results["experiments"]["llm-pretrain"]
    assert pre["status"] == "ok", pre.get("traceback")
    assert set(pre["metrics"]["runs"]) == {"fp32", "bf16", "fp16"}
    runs = pre["metrics"]["runs"]
    bf16_steps = 3 if native_bf16() else 2  # emulated bf16 runs only to the comparison step, like fp16
    assert [len(runs[p]["train_losses"]) for p in ("fp32", "bf16", "fp16")] == [3, bf16_steps, 2]
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
                [
                    "reproduce",
                    "--size",
                    "tiny",
                    "--only",
                    "llm-pretrain",
                    "--out",
                    str(out),
                    "--cache-dir",
                    str(cache),
                    *extra,
                ]
            )
            == 0
        )
        assert _results(out)[1]["experiments"]["llm-pretrain"]["metrics"]["cached"] is cached
