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


def _decode_row(method, kind, tokens_per_s, speedup, matches=True, tau=1.0, proposed=(), accepted=()):
    return {
        "method": method,
        "kind": kind,
        "temperature": 0.0,
        "tokens_per_s": tokens_per_s,
        "speedup": speedup,
        "matches_plain": matches,
        "tokens_per_call": tau,
        "proposed_by_position": list(proposed),
        "accepted_by_position": list(accepted),
    }


def test_decoding_goals_are_computed_from_the_rows():
    from papernotes.llm.experiments.decoding_report import decoding_goals
    from papernotes.llm.generation.cost import CostCurve

    rows = [
        _decode_row("plain", "open", 20.0, 1.0),
        _decode_row("speculative", "open", 44.0, 2.2),
        _decode_row("lookup", "input-grounded", 40.0, 2.0),
        _decode_row("hf-lookup", "input-grounded", 30.0, 1.5),
        _decode_row("hf-plain", "open", 10.0, 0.5),
        _decode_row("hf-assisted-gamma4", "open", 40.0, 2.0),
        _decode_row("medusa", "open", 40.0, 2.0, tau=2.6),
        _decode_row("mtp", "open", 30.0, 1.5, proposed=(10, 8), accepted=(8, 6)),
    ]
    cost = CostCurve({1: 1.0, 5: 1.1}, context=128)
    goals = {g.claim.split(":")[0]: g for g in decoding_goals(rows, cost, plain=20.0, limit=25.0)}
    verdicts = [g.verdict for g in decoding_goals(rows, cost, plain=20.0, limit=25.0)]
    assert verdicts == ["met", "missed", "met", "missed", "met", "met", "met", "met", "met", "met", "met"]
    assert goals["MTP"].measured == 8 / 10  # the first draft position: the second token
    # a missing run, zero against zero, and a broken greedy output
    rows = [r for r in rows if r["method"] not in ("lookup", "hf-plain")] + [
        _decode_row("hf-plain", "open", 0, 0)
    ]
    rows[1]["matches_plain"] = False
    goals = decoding_goals(rows, CostCurve({1: 1.0}, context=128), plain=0.0, limit=0.0)
    by_claim = {g.claim: g for g in goals}
    assert [g.verdict for g in goals if "prompt lookup" in g.claim] == ["not judged", "not judged"]
    assert by_claim["our plain decoding / HF generate (tokens/s)"].verdict == "not judged"
    assert by_claim["plain decoding as a share of the memory-read limit"].verdict == "not judged"
    assert by_claim["verifying 5 tokens costs at most 1.2x one token's forward"].verdict == "not judged"
    assert goals[-1].verdict == "missed"
