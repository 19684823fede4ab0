"""The experiments' verdict logic on synthetic rows: met, missed, a missing run, and zero against zero."""

import pytest

from papernotes.video.experiments import EXPERIMENTS
from papernotes.video.experiments.online_detection import online_goals
from papernotes.video.experiments.recognition import recognition_goals

CARDS = {m.name for e in EXPERIMENTS for m in e.methods}


def verdicts(goals, method=None):
    return {g.claim: g.verdict for g in goals if method is None or g.method == method}


def recognition_row(pair, top1=0.5, flops=100):
    return {"pair_accuracy": pair, "top1": top1, "flops": flops}


def test_recognition_goals_met_and_missed():
    rows = {
        "tsn": recognition_row(0.50, top1=0.20),
        "tsm": recognition_row(0.95),
        "tdn": recognition_row(0.70, flops=130),
        "two-stream": recognition_row(0.92, top1=0.40, flops=200),
    }
    goals = recognition_goals(rows, latency_ratio=1.02, pair_goal=90.0)
    assert all(g.method in CARDS for g in goals)
    by_method = {}
    for g in goals:
        by_method.setdefault(g.method, []).append(g)
    tsn = by_method["TSN"][0]
    assert tsn.verdict == "met" and tsn.measured == pytest.approx(50.0) and tsn.target == "<= 60 %"
    [tsm_pair, tsm_flops, tsm_latency] = by_method["TSM"]
    assert tsm_pair.verdict == "met" and tsm_pair.measured == pytest.approx(95.0)
    assert tsm_flops.verdict == "met" and tsm_flops.measured == 1.0
    assert tsm_latency.verdict == "met" and tsm_latency.measured == pytest.approx(2.0)
    # the judged ratio is the probe's; the trained models' ratio at their own size is only reported
    probe = {"frame_size": 112, "num_segments": 8, "backbone": "resnet18", "rounds": 30}
    slow_small = recognition_goals(rows, 1.02, 90.0, probe, train_size_latency=1.11, frame_size=32)
    [latency] = [g for g in slow_small if g.claim == tsm_latency.claim]
    assert latency.verdict == "met" and latency.measured == pytest.approx(2.0)
    assert "at 112 px, K = 8, resnet18" in latency.detail and "at 32 px: +11.0 %" in latency.detail
    assert by_method["TDN"][0].verdict == "missed" and by_method["TDN"][0].measured == pytest.approx(70.0)
    two = verdicts(goals, "Two-Stream")
    assert set(two.values()) == {"met"} and len(two) == 2  # pair accuracy, and top-1 above TSN's
    # a model that did not run has no pair goal at all; TSM's FLOPs against a missing TSN are not judged
    assert "TAM" not in by_method
    no_tsn = recognition_goals({"tsm": recognition_row(0.95)}, latency_ratio=None, pair_goal=90.0)
    assert verdicts(no_tsn, "TSN") == {
        "TSN's average consensus is blind to temporal order: pair accuracy at chance": "not judged"
    }
    assert set(verdicts(no_tsn, "TSM").values()) == {"met", "not judged"}
    assert verdicts(no_tsn, "Two-Stream") == {"Two-Stream beats the RGB-only TSN in top-1": "not judged"}


def test_recognition_goals_never_call_zero_against_zero_met():
    # TSN and TSM at 0 FLOPs (nothing counted): the ratio 0/0 is no evidence
    rows = {"tsn": recognition_row(0.5, flops=0), "tsm": recognition_row(None, flops=0)}
    goals = recognition_goals(rows, latency_ratio=float("nan"), pair_goal=90.0)
    tsm = {g.claim: g for g in goals if g.method == "TSM"}
    assert all(g.verdict == "not judged" for g in tsm.values())  # pair None, FLOPs 0/0, latency NaN
    # a TSN that misses its blind spot (it cannot, but the judge must say so if it did)
    assert recognition_goals({"tsn": recognition_row(0.75)}, None, 90.0)[0].verdict == "missed"


def online_row(mAP, epoch_s=1.0, diff=1e-6):
    return {"mAP": mAP, "epoch_s": epoch_s, "stream_max_abs_diff": diff}


def test_online_goals_met_and_missed():
    rows = {
        "mlp": online_row(0.40),
        "trn": online_row(0.35, epoch_s=6.0),
        "idn": online_row(0.60, diff=0.5),
        "oadtr": {**online_row(0.80, epoch_s=2.0), "int8_mAP": 0.785},
    }
    goals = online_goals(rows, paper_rtf=7.5, int8_rtf=12.0)
    assert all(g.method in CARDS for g in goals)
    assert verdicts(goals, "TRN (online detection)") == {
        "history helps: trn beats the per-frame MLP": "missed",
        "trn streams exactly its offline scores": "met",
    }
    assert verdicts(goals, "IDN") == {
        "history helps: idn beats the per-frame MLP": "met",
        "idn streams exactly its offline scores": "missed",
    }
    oadtr = {g.claim: g for g in goals if g.method == "OadTR"}
    assert oadtr["OadTR trains faster per epoch than the recurrent TRN"].measured == pytest.approx(3.0)
    assert oadtr["OadTR trains faster per epoch than the recurrent TRN"].verdict == "met"
    assert oadtr["OadTR streams faster than real time at the paper's dimensions"].verdict == "missed"
    assert oadtr["OadTR is at least as accurate as TRN"].measured == pytest.approx(45.0)
    int8_speed = "OadTR with int8 weights streams faster than real time at the paper's dimensions"
    assert oadtr[int8_speed].verdict == "met"
    assert oadtr["int8 weights keep OadTR's accuracy"].measured == pytest.approx(1.5)
    assert oadtr["int8 weights keep OadTR's accuracy"].verdict == "missed"  # 1.5 points lost > 1


def test_online_goals_with_a_missing_run_and_zero_against_zero():
    goals = online_goals({"mlp": online_row(0.4), "oadtr": online_row(0.9, epoch_s=0.0)}, paper_rtf=None)
    got = verdicts(goals)
    assert got["history helps: trn beats the per-frame MLP"] == "not judged"  # TRN did not run
    assert got["OadTR is at least as accurate as TRN"] == "not judged"
    assert got["OadTR trains faster per epoch than the recurrent TRN"] == "not judged"
    assert got["OadTR streams faster than real time at the paper's dimensions"] == "not judged"
    assert got["int8 weights keep OadTR's accuracy"] == "not judged"  # no int8 run
    assert got["history helps: oadtr beats the per-frame MLP"] == "met"
    # TRN and OadTR both at 0 s per epoch: 0 / 0 is not a speed-up
    zero = online_goals({"trn": online_row(0.5, epoch_s=0.0), "oadtr": online_row(0.5, epoch_s=0.0)}, None)
    assert verdicts(zero)["OadTR trains faster per epoch than the recurrent TRN"] == "not judged"
