"""Online detectors: shapes, training losses, causality, bounded windows, and streaming equal to offline."""

import numpy as np
import pytest
import torch

from papernotes.core.train import short_run, train
from papernotes.errors import ConfigError, DataError
from papernotes.video.online.models import DETECTORS, build_detector
from papernotes.video.online.stream import stream_scores
from papernotes.video.online.train import ChunkBatches, detector_loss, labels_of, score_session

D, C = 16, 5


def session(T: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_streaming_equals_offline_on_a_long_session(name):
    torch.manual_seed(0)
    model = build_detector(name, "tiny").eval()
    x = session(300)
    offline = model(x)[0]
    assert offline.shape == (300, C)
    torch.testing.assert_close(stream_scores(model, x[0]), offline, atol=1e-5, rtol=1e-4)
    # a second stream from the same model starts fresh
    torch.testing.assert_close(stream_scores(model, x[0, :50]), offline[:50], atol=1e-5, rtol=1e-4)


def test_oadtr_streams_its_offline_scores_with_tuned_matrix_forms(tmp_path, monkeypatch):
    """The stream's projections in their measured-fastest forms (oneDNN packed, transposed copies ...) sum in
    other orders than F.linear: the scores stay the offline ones to fp32 tolerance."""
    monkeypatch.setenv("PAPERNOTES_CACHE", str(tmp_path))  # the tuning cache
    torch.manual_seed(0)
    model = build_detector("oadtr", "tiny").eval()
    x = session(60)
    offline = model(x)[0]
    report = model.tune_for_streaming(2)
    assert report.shapes  # every projection shape was measured
    torch.testing.assert_close(stream_scores(model, x[0]), offline, atol=1e-5, rtol=1e-4)
    streams = model.stream()
    both = torch.stack([streams.step(f) for f in torch.stack((x[0], x[0]), dim=1)])  # 2 streams at once
    torch.testing.assert_close(both[:, 0], offline, atol=1e-5, rtol=1e-4)
    # with autograd on, F.linear runs (on a weight the tuning may have stored column-major: rounding only)
    torch.testing.assert_close(model(x)[0], offline, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_scores_never_read_the_future_and_the_loss_trains_every_parameter(name):
    torch.manual_seed(0)
    model = build_detector(name, "tiny").eval()
    x = session(40)
    changed = x.clone()
    changed[:, 25:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[:, :25], model(x)[:, :25], rtol=0, atol=0)
    model.train()
    targets = torch.randint(0, C, (2, 40), generator=torch.Generator().manual_seed(1))
    targets[0, :3] = -100  # ignored frames (ambiguous) take no part
    loss = model.loss(torch.randn(2, 40, D), targets)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("name", ["oadtr", "idn"])
def test_window_models_forget_frames_older_than_their_history(name):
    torch.manual_seed(0)
    model = build_detector(name, "tiny").eval()
    # IDN: its window; OadTR: (encoder layers + 1) sliding windows of W − 1 frames, and the position
    # convolution's kernel
    reach = model.history
    cfg = model.cfg
    assert reach == (cfg.window if name == "idn" else 2 * (cfg.window - 1) + cfg.position_kernel)
    x = session(reach + 10)
    changed = x.clone()
    changed[:, 0] += 5.0
    with torch.no_grad():
        a, b = model(x)[0], model(changed)[0]
    torch.testing.assert_close(a[reach:], b[reach:], rtol=0, atol=0)  # frame reach no longer sees frame 0
    assert not torch.allclose(a[reach - 1], b[reach - 1])  # frame reach − 1 still does


def test_oadtr_one_pass_equals_a_forward_per_window():
    """Training scores all frames of a chunk in one masked pass; each must equal the score of a forward
    over that frame's own window (the frames it depends on), as a per-window model computes it."""
    torch.manual_seed(0)
    model = build_detector("oadtr", "tiny").eval()
    x = session(40)
    R = model.history
    with torch.no_grad():
        one_pass, future = model(x, return_future=True)
        for t in range(40):
            window = x[:, max(0, t - R + 1) : t + 1]
            alone, alone_future = model(window, return_future=True)
            torch.testing.assert_close(one_pass[0, t], alone[0, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(future[0, t], alone_future[0, -1], atol=1e-5, rtol=1e-5)


def test_oadtr_streams_many_sessions_at_once_with_bounded_caches():
    torch.manual_seed(0)
    model = build_detector("oadtr", "tiny").eval()
    x = torch.randn(3, 30, D, generator=torch.Generator().manual_seed(2))
    stream = model.stream()
    streamed = torch.stack([stream.step(x[:, t]) for t in range(30)], dim=1)  # (3, 30, C): 3 streams
    with torch.no_grad():
        torch.testing.assert_close(streamed, model(x), atol=1e-5, rtol=1e-4)
    W = model.cfg.window
    for keys, values in stream.encoder_cache + stream.decoder_cache:  # the W − 1 newest frames, no more
        assert keys.shape[-2] == values.shape[-2] == W - 1


def test_oadtr_future_loss_targets_the_next_frames():
    torch.manual_seed(0)
    model = build_detector("oadtr", "tiny").eval()
    x = session(12)
    targets = torch.arange(12)[None] % C
    current, future = model(x, return_future=True)
    Q = model.cfg.future_steps
    ce = torch.nn.functional.cross_entropy
    manual = []
    for t in range(12):
        for q in range(Q):
            if t + 1 + q < 12:
                manual.append(ce(future[0, t, q][None], targets[0, t + 1 + q][None]))
    expected = ce(current[0], targets[0]) + 0.5 * torch.stack(manual).mean()
    torch.testing.assert_close(model.loss(x, targets), expected)


def test_bad_input_is_refused_clearly():
    model = build_detector("oadtr", "tiny").eval()
    with pytest.raises(DataError, match=r"expected features \(B, T, 16\)"):
        model(torch.zeros(1, 5, 8))
    stream = model.stream()
    with pytest.raises(DataError, match="non-finite feature at frame 0"):
        stream.step(torch.full((D,), float("nan")))
    with pytest.raises(DataError, match=r"call .eval\(\)"):
        build_detector("trn", "tiny").stream()
    with pytest.raises(ConfigError, match="unknown detector 'lstr'"):
        build_detector("lstr")
    with pytest.raises(ConfigError, match="unknown settings"):
        build_detector("idn", "tiny", windw=3)


@pytest.mark.parametrize("name", ["oadtr", "idn", "trn"])
def test_scoring_a_long_session_in_pieces_equals_one_pass(name):
    torch.manual_seed(0)
    model = build_detector(name, "tiny").eval()
    x = session(95)[0]
    with torch.no_grad():
        torch.testing.assert_close(score_session(model, x, piece=20), model(x[None])[0], atol=1e-5, rtol=1e-4)


def test_chunk_batches_are_a_function_of_the_step_and_train_a_detector():
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(n, D)).astype(np.float32) for n in (30, 50, 8)]
    labels = [rng.integers(0, C, n) for n in (30, 50, 8)]
    batches = ChunkBatches(features, labels, length=10, batch_size=4, seed=3)
    a, b = batches(5, 0), batches(5, 0)
    assert a["features"].shape == (4, 10, D) and torch.equal(a["features"], b["features"])
    assert not torch.equal(batches(6, 0)["features"], a["features"])
    model = build_detector("tcn", "tiny")
    result = train(model, detector_loss, batches, short_run(30, 4, 3e-3, progress=False))
    assert result.train_losses[-1] < result.train_losses[0]
    with pytest.raises(DataError, match="no training session has 60 frames"):
        ChunkBatches(features, labels, length=60, batch_size=4)
    onehot = np.eye(4)[[0, 3, 1, 3]]
    assert labels_of(onehot, ignore_index=3).tolist() == [0, -100, 1, -100]


def test_streaming_benchmark_runs_at_tiny_size():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "online_streaming.py"
    spec = importlib.util.spec_from_file_location("online_streaming", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--models", "oadtr", "trn", "tcn", "--streams", "2"])
    for row in result["models"].values():
        assert row["single_stream_rtf"] > 0 and row["batched_total_fps"] == 2 * row["batched_fps_per_stream"]
    assert "oadtr_single_stream_rtf_ge_10" in result["goals"]
    oadtr = result["models"]["oadtr"]
    assert oadtr["int8_single_stream_rtf"] > 0 and oadtr["int8_same_argmax_fraction"] >= 0.5
    assert 0 < oadtr["int8_max_abs_score_diff"] < 0.1 * oadtr["fp32_max_abs_score"]
