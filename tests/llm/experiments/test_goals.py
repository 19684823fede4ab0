"""The LLM experiments' goals are computed from the run's numbers: met, missed, missing, zero against zero."""

from papernotes.llm.experiments import attention, pretrain


def _runs(bf16_speed: float) -> dict:
    return {
        p: {"tokens_per_s": speed} for p, speed in (("fp32", 100.0), ("bf16", bf16_speed), ("fp16", 10.0))
    }


def test_pretrain_goals_judge_the_loss_gap_and_speed_only_with_native_bf16(monkeypatch):
    monkeypatch.setattr(pretrain, "native_bf16", lambda: True)
    goals = pretrain.pretrain_goals(_runs(150.0), {"fp32": 3.0, "bf16": 3.02, "fp16": 3.2})
    assert [g.verdict for g in goals] == ["met", "missed", "met"]
    assert goals[1].measured == 3.2 - 3.0
    goals = pretrain.pretrain_goals(_runs(80.0), {"fp32": 3.0, "bf16": 2.96, "fp16": 3.0})
    assert [g.verdict for g in goals] == ["met", "met", "missed"]
    monkeypatch.setattr(pretrain, "native_bf16", lambda: False)  # an AVX2 CPU: speed is not a fair test
    goals = pretrain.pretrain_goals(_runs(150.0), {"fp32": 3.0, "bf16": 3.0, "fp16": float("nan")})
    assert [g.verdict for g in goals] == ["met", "not judged", "not judged"]
    assert "no native bf16" in goals[2].detail


def _row(backend: str, n: int, time_s: float | None, extra: float | None) -> dict:
    return {"mode": "forward", "backend": backend, "seq_len": n, "time_s": time_s, "peak_extra_bytes": extra}


def test_attention_goals_read_the_longest_sequence_and_refuse_zero_against_zero():
    rows = [_row("naive", 512, 1.0, 1e6), _row("flash", 512, 9.0, 9e5), _row("sdpa", 512, 1.0, 0.0)]
    rows += [_row("naive", 2048, 4.0, 1e9), _row("flash", 2048, 1.5, 1e7), _row("sdpa", 2048, 1.0, 0.0)]
    memory, time = attention.attention_goals(rows)
    assert (memory.verdict, memory.measured, time.verdict, time.measured) == ("met", 0.01, "met", 1.5)
    rows[-2] = _row("flash", 2048, 2.5, 2e8)
    assert [g.verdict for g in attention.attention_goals(rows)] == ["missed", "missed"]
    rows[-3:] = [_row("naive", 2048, None, 0.0), _row("flash", 2048, 1.0, 0.0)]  # naive skipped, no SDPA
    assert [g.verdict for g in attention.attention_goals(rows)] == ["not judged", "not judged"]
