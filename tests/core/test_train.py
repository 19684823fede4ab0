"""The training loop: exact resume, accumulation, clipping, non-finite losses, checkpoint safety, fp16,
and the LR schedule."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from papernotes.core import checkpoint
from papernotes.core.checkpoint import load_checkpoint
from papernotes.core.config import from_dict, preset, to_dict
from papernotes.core.precision import MixedPrecision
from papernotes.core.schedule import lr_at
from papernotes.core.train import PRESETS, TrainConfig, train
from papernotes.errors import CheckpointError, ConfigError, DataError, TrainingError

VOCAB, SEQ = 16, 8


class TiedLM(nn.Module):
    """A dropout-free toy LM whose output head shares the embedding matrix (like Llama's tied configs)."""

    def __init__(self, dim: int = 16, tied: bool = True) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        if tied:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(tokens)  # (B, T, D)
        return self.lm_head(self.norm(hidden + torch.tanh(self.mix(hidden))))  # (B, T, V)


def make_model(seed: int = 0, tied: bool = True) -> TiedLM:
    torch.manual_seed(seed)
    return TiedLM(tied=tied)


def full_batch(step: int, rows: int) -> dict[str, torch.Tensor]:
    """A deterministic global batch: next token = (3 * token + 1) mod V, a learnable rule."""
    g = torch.Generator().manual_seed(step)
    start = torch.randint(0, VOCAB, (rows, 1), generator=g)
    seq = [start]
    for _ in range(SEQ):
        seq.append((3 * seq[-1] + 1) % VOCAB)
    tokens = torch.cat(seq, dim=1)  # (B, T + 1)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "step": torch.full((rows,), step)}


def batches_for(cfg: TrainConfig, fail_at: int | None = None):
    """batches(step, micro_step): the micro-step's slice of the global batch (any k gives the same batch)."""
    rows = cfg.batch_size // cfg.grad_accum_steps

    def batches(step: int, micro_step: int) -> dict[str, torch.Tensor]:
        if step == fail_at:
            raise KeyboardInterrupt(f"simulated crash at step {step}")
        full = full_batch(step, cfg.batch_size)
        return {k: v[micro_step * rows : (micro_step + 1) * rows] for k, v in full.items()}

    return batches


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    logits = model(batch["input_ids"]).float()  # (B, T, V); fp32 reduction
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1))  # (B*T, V)
    return loss, batch["labels"].numel()


def config(**overrides) -> TrainConfig:
    return dataclasses.replace(preset(PRESETS, "tiny"), **overrides)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_on_a_learnable_task():
    cfg = config(steps=40)
    model = make_model()
    result = train(model, lm_loss, batches_for(cfg), cfg, val_batches=lambda i: full_batch(10_000 + i, 8))
    assert len(result.train_losses) == 40
    assert result.train_losses[-1] < 0.3 * result.train_losses[0]
    assert [s for s, _ in result.val_losses] == [10, 20, 30, 40]
    assert result.val_losses[-1][1] < result.val_losses[0][1]  # still falling after step 10
    assert result.tokens == 40 * cfg.batch_size * SEQ
    assert result.tokens_per_s > 0 and result.final_scale is None


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, precision):
    cfg = config(steps=20, checkpoint_every=5, precision=precision, out_dir=str(tmp_path / "full"))
    reference = make_model()
    full = train(reference, lm_loss, batches_for(cfg), cfg)

    cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "crashed"))
    with pytest.raises(KeyboardInterrupt):
        train(make_model(), lm_loss, batches_for(cfg, fail_at=12), cfg)
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint").step == 10
    model = make_model(seed=123)  # different init: everything must come from the checkpoint
    resumed = train(model, lm_loss, batches_for(cfg), cfg, resume=True)

    assert resumed.start_step == 10
    assert resumed.train_losses == full.train_losses[10:]
    assert resumed.final_scale == full.final_scale
    expected = weights(reference)
    assert all(torch.equal(v, expected[k]) for k, v in weights(model).items())
    assert model.lm_head.weight is model.embed_tokens.weight


def test_stop_after_then_resume_equals_the_uninterrupted_run(tmp_path):
    cfg = config(steps=12, checkpoint_every=0, out_dir=str(tmp_path / "full"))
    reference = make_model()
    full = train(reference, lm_loss, batches_for(cfg), cfg)

    chunked_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "chunked"), stop_after=5)
    model = make_model()
    first = train(model, lm_loss, batches_for(chunked_cfg), chunked_cfg)
    assert len(first.train_losses) == 5 and load_checkpoint(tmp_path / "chunked" / "checkpoint").step == 5
    # the schedule spans all 12 steps, so the first 5 losses are those of the full run
    assert first.train_losses == full.train_losses[:5]
    rest_cfg = dataclasses.replace(chunked_cfg, stop_after=None)
    rest = train(make_model(seed=7), lm_loss, batches_for(rest_cfg), rest_cfg, resume=True)
    assert first.train_losses + rest.train_losses == full.train_losses


def test_gradient_accumulation_equals_one_full_batch_step():
    cfg = config(steps=3, batch_size=8, grad_accum_steps=1)
    one = make_model()
    train(one, lm_loss, batches_for(cfg), cfg)
    cfg = dataclasses.replace(cfg, grad_accum_steps=4)  # 4 micro-steps of 2 rows
    accumulated = make_model()
    train(accumulated, lm_loss, batches_for(cfg), cfg)
    expected = weights(one)
    for name, value in weights(accumulated).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_global_gradient_norm():
    model = make_model()
    mp = MixedPrecision("fp32")
    optimizer = torch.optim.SGD([p for _, p in mp.prepare(model)], lr=0.0)
    loss, _ = lm_loss(model, full_batch(0, 8))
    mp.backward(loss * 100)  # a large gradient
    outcome = mp.step(optimizer, grad_clip=0.5)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in mp.master_parameters])
    assert outcome.grad_norm > 0.5  # the reported norm is the one before clipping
    assert float(clipped) <= 0.5 * (1 + 1e-5)
    assert float(clipped) == pytest.approx(0.5, rel=1e-4)


def test_nonfinite_loss_raises_training_error_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    cfg = config(steps=10, checkpoint_every=5, out_dir=str(tmp_path))

    def poisoned_loss(model, batch):
        loss, tokens = lm_loss(model, batch)
        return (loss * float("nan") if int(batch["step"][0]) == 7 else loss), tokens

    with pytest.raises(TrainingError, match="step 7"):
        train(make_model(), poisoned_loss, batches_for(cfg), cfg)
    saved = load_checkpoint(tmp_path / "checkpoint")
    assert saved.step == 5
    assert all(torch.isfinite(v).all() for v in saved.weights.values())


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = config(steps=10, checkpoint_every=5, out_dir=str(tmp_path))
    real_writer = checkpoint.save_weights
    calls = []

    def writer_that_dies_the_second_time(path, state, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"\x00" * 64)  # part of a file, then the "crash"
            raise OSError("simulated crash while writing weights")
        real_writer(path, state, metadata)

    monkeypatch.setattr(checkpoint, "save_weights", writer_that_dies_the_second_time)
    with pytest.raises(OSError, match="simulated crash"):
        train(make_model(), lm_loss, batches_for(cfg), cfg)
    assert load_checkpoint(tmp_path / "checkpoint").step == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temp dir left behind


def test_fp16_training_keeps_fp16_params_and_fp32_masters(tmp_path):
    cfg = config(steps=6, precision="fp16", out_dir=str(tmp_path))
    seen_dtypes = set()

    def recording_loss(model, batch):
        seen_dtypes.update(p.dtype for p in model.parameters())
        return lm_loss(model, batch)

    model = make_model(tied=False)
    result = train(model, recording_loss, batches_for(cfg), cfg)
    assert seen_dtypes == {torch.float16}  # the forward/backward ran on fp16 weights
    masters = load_checkpoint(tmp_path / "checkpoint").weights
    assert all(v.dtype == torch.float32 for v in masters.values())
    # The masters carry precision fp16 cannot hold (updates smaller than half an fp16 ulp accumulate).
    assert any(not torch.equal(v, v.half().float()) for v in masters.values())
    # After training, the model is handed back in fp32 holding exactly the master weights.
    assert all(torch.equal(v, masters[k]) for k, v in model.state_dict().items())
    assert result.final_scale is not None and result.final_scale > 1


def test_resume_without_a_checkpoint_raises_checkpoint_error_naming_the_path(tmp_path):
    cfg = config(out_dir=str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match=str(tmp_path / "run" / "checkpoint")):
        train(make_model(), lm_loss, batches_for(cfg), cfg, resume=True)


def test_batch_with_the_wrong_number_of_rows_raises_data_error():
    cfg = config(steps=2)
    with pytest.raises(DataError, match="expected 8"):
        train(make_model(), lm_loss, lambda step, micro: full_batch(step, 5), cfg)


def test_train_config_validates_and_round_trips_through_a_dict():
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        TrainConfig(batch_size=10, grad_accum_steps=4)
    cfg = config(betas=(0.8, 0.9))
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # betas come back as a tuple


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    kw = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 10, "total_steps": 110}
    assert lr_at(0, **kw) == pytest.approx(0.1)  # first step already gets lr / warmup_steps
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)  # warmup ends at the peak
    assert lr_at(10, **kw) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway: the mean of peak and floor
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)  # stays at the floor
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    assert lr_at(3, lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=4) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 3 / 4))
    )


def test_short_run_sets_warmup_and_cosine_floor_and_keeps_overrides():
    from papernotes.core.train import short_run

    cfg = short_run(200, 8, lr=3e-3, precision="bf16")
    assert (cfg.warmup_steps, cfg.min_lr, cfg.eval_every, cfg.checkpoint_every) == (10, 3e-3 / 10, 0, 0)
    assert cfg.precision == "bf16" and short_run(5, 2, 1.0, min_lr=0.5).warmup_steps == 1


def test_optimizer_state_covers_only_trainable_parameters():
    cfg = config(steps=2, eval_every=0, checkpoint_every=0)
    model = make_model(tied=False)
    full = train(model, lm_loss, batches_for(cfg), cfg).optimizer_state_bytes
    model.requires_grad_(False)
    model.mix.requires_grad_(True)  # 16·16 + 16 trainable scalars: AdamW keeps m and v in fp32
    frozen = train(model, lm_loss, batches_for(cfg), cfg).optimizer_state_bytes
    step_counters = 2 * 4  # AdamW's per-parameter "step" scalars (fp32 tensors), one per trainable tensor
    assert frozen == 2 * 4 * (16 * 16 + 16) + step_counters
    n_all = sum(p.numel() for p in model.parameters())
    assert full == 2 * 4 * n_all + 4 * len(list(model.parameters()))
