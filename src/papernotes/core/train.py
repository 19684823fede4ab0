"""The one training loop: precision, gradient accumulation, clipping, LR schedule, checkpoint/resume, DDP.

Not a paper method; it combines AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101: decoupled weight decay),
linear warmup + cosine decay (``core/schedule.py``), global-norm clipping (Pascanu et al. 2013,
arXiv 1211.5063) and mixed precision (Micikevicius et al. 2018, arXiv 1710.03740, ``core/precision.py``).

Contract (model-agnostic):
  * ``batches(step, micro_step)`` returns the GLOBAL micro-batch for that step: a dict of tensors whose
    leading dim is ``batch_size // grad_accum_steps``. It must be a pure function of its arguments; that makes
    resume and DDP exact. Under DDP each rank takes the contiguous rows ``[rank * b, (rank + 1) * b)``.
  * ``loss_fn(model, batch) -> (loss, num_tokens)``: ``loss`` is the scalar mean over the rows of ``batch``.
    ``model`` may be a DDP wrapper: call it, do not read attributes from it.

Gradient normalisation: with k micro-steps and W ranks, each rank back-propagates ``loss / k`` per micro-step
and DDP averages gradients over ranks, so the applied gradient is

    g = (1 / W) * sum_ranks (1 / k) * sum_micro grad(mean over the rank's micro-batch rows)
      = grad(mean over all batch_size rows),

the single-process full-batch gradient, as long as every rank's micro-batch has the same number of rows (which
the loop enforces). If ``loss`` is a per-token mean and rows carry different token counts, rows are weighted
equally, not tokens.

Tests: exact resume (``torch.equal`` weights after 20 steps vs 10 + resume), accumulation equals one big
batch, 2 gloo processes equal 1 process, non-finite loss raises ``TrainingError`` without touching the last
checkpoint, and fp16 training keeps fp16 weights with fp32 masters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from papernotes.core.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from papernotes.core.config import to_dict
from papernotes.core.precision import PRECISION_MODES, MixedPrecision
from papernotes.core.schedule import lr_at
from papernotes.errors import CheckpointError, ConfigError, DataError, TrainingError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of positions that carry no loss (F.cross_entropy's ignore_index)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, "int | torch.Tensor"]]
BatchFn = Callable[[int, int], Batch]
ValBatchFn = Callable[[int], Batch]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`; defaults suit small language models on one machine."""

    steps: int = 2000  # optimizer steps in the whole run (the cosine schedule ends here)
    stop_after: int | None = None  # end this call after this many steps; the schedule still spans `steps`
    batch_size: int = 32  # GLOBAL examples per optimizer step, summed over micro-steps and ranks
    grad_accum_steps: int = 1  # micro-steps per optimizer step; each sees batch_size // grad_accum_steps rows
    lr: float = 3e-4  # peak learning rate, reached at the end of warmup
    min_lr: float = 3e-5  # floor of the cosine decay (lr / 10, as in Llama/Chinchilla recipes)
    warmup_steps: int = 100  # linear warmup length in optimizer steps
    weight_decay: float = 0.1  # AdamW decoupled decay, applied to >= 2-D parameters only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW moment decay rates (GPT-3 / Llama values)
    eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # max global L2 norm of the gradient; 0 disables clipping
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp16" (fp32 masters + loss scaling) | "auto"
    eval_every: int = 200  # evaluate every this many steps (and at the end); 0 disables
    eval_batches: int = 10  # validation batches per evaluation
    checkpoint_every: int = 500  # checkpoint every this many steps (and at the end); 0 = only at the end
    out_dir: str | None = None  # run directory; checkpoints go to out_dir/checkpoint/; None = no checkpoints
    seed: int = 1337  # seeds torch, python and numpy RNGs at the start of a fresh run
    log_every: int = 10  # log a line every this many steps
    progress: bool = True  # show a tqdm bar (rank 0 only)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML/JSON give a list
        if self.precision not in PRECISION_MODES:
            raise ConfigError(
                f"TrainConfig.precision: expected one of {PRECISION_MODES}, got {self.precision!r}"
            )
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ConfigError(
                "TrainConfig: expected steps >= 0, batch_size >= 1, grad_accum_steps >= 1, got "
                f"{self.steps}, {self.batch_size}, {self.grad_accum_steps}"
            )
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"TrainConfig.batch_size ({self.batch_size}) must be divisible by grad_accum_steps "
                f"({self.grad_accum_steps})"
            )


def short_run(
    steps: int, batch_size: int, lr: float, min_lr: float | None = None, **overrides
) -> TrainConfig:
    """A TrainConfig for a run of ``steps``: linear warmup over 5 % of it, cosine to ``min_lr``
    (default lr / 10), no evaluation or checkpoints unless ``overrides`` ask for them."""
    return dataclasses.replace(
        TrainConfig(),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10 if min_lr is None else min_lr,
        warmup_steps=max(1, steps // 20),
        **{"eval_every": 0, "checkpoint_every": 0, **overrides},
    )


PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    "tiny": TrainConfig(
        steps=20,
        batch_size=8,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        eval_every=10,
        eval_batches=2,
        checkpoint_every=10,
        log_every=5,
        progress=False,
    ),
}


@dataclass
class TrainResult:
    """What a call to :func:`train` did (steps of this call only, when resumed)."""

    train_losses: list[float] = field(default_factory=list)  # mean loss per optimizer step (all ranks)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (steps completed, mean val loss)
    grad_norms: list[float] = field(default_factory=list)  # global grad norm per step, before clipping
    tokens: int = 0  # tokens trained on in this call, all ranks
    tokens_per_s: float = 0.0  # tokens / wall_s
    wall_s: float = 0.0  # wall-clock seconds of the step loop
    skipped_steps: int = 0  # fp16 steps skipped for inf/NaN gradients
    final_scale: float | None = None  # fp16 loss scale at the end; None in other modes
    checkpoint_dir: str | None = None  # where the last checkpoint was written, if any
    start_step: int = 0  # first step run by this call (> 0 after a resume)
    optimizer_state_bytes: int = 0  # bytes held in the optimizer's state tensors at the end (AdamW: m and v)

    @property
    def final_loss(self) -> float:
        """Mean training loss of the last 10 steps (one step's loss is noisy); NaN before any step."""
        last = self.train_losses[-10:]
        return sum(last) / len(last) if last else float("nan")


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False  # True if train() initialised the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_rank() -> int:
    """This process's global rank under torchrun (0 when not distributed); only rank 0 writes outputs."""
    return int(os.environ.get("RANK", "0"))


def _setup_distributed() -> _Distributed:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        created = True
    return _Distributed(dist.get_rank(), dist.get_world_size(), local_rank, created)


def _local_rows(batch: Batch, rows: int, ddp: _Distributed, device: torch.device, where: str) -> Batch:
    """Check that every tensor has ``rows`` leading rows; keep this rank's contiguous slice, on device."""
    if not isinstance(batch, dict) or not batch:
        raise DataError(f"{where} must return a non-empty dict of tensors, got {type(batch).__name__}")
    per_rank = rows // ddp.world_size
    out = {}
    for name, t in batch.items():
        if t.shape[0] != rows:
            raise DataError(f"{where} returned {name!r} with {t.shape[0]} rows; expected {rows}")
        out[name] = t[ddp.rank * per_rank : (ddp.rank + 1) * per_rank].to(device)
    return out


def _param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices/embeddings; never decay 1-D tensors (norm gains, biases)."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _all_reduce_mean(values: torch.Tensor, ddp: _Distributed) -> torch.Tensor:
    if ddp.enabled:
        dist.all_reduce(values)
        values = values / ddp.world_size
    return values


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    val_batches: ValBatchFn,
    cfg: TrainConfig,
    mp: MixedPrecision,
    ddp: _Distributed,
    device: torch.device,
) -> float:
    """Mean validation loss over ``cfg.eval_batches`` global batches (each rank its rows, then averaged)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(cfg.eval_batches):
        raw = val_batches(i)
        rows = next(iter(raw.values())).shape[0]
        if rows % ddp.world_size:
            raise DataError(f"val_batches({i}) has {rows} rows, not divisible by WORLD_SIZE={ddp.world_size}")
        with mp.autocast():
            loss, _ = loss_fn(model, _local_rows(raw, rows, ddp, device, f"val_batches({i})"))
        total += loss.detach().double()
    model.train(was_training)
    return float(_all_reduce_mean(total / max(cfg.eval_batches, 1), ddp))


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batches: BatchFn,
    cfg: TrainConfig,
    val_batches: ValBatchFn | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps (from the checkpoint's step if ``resume``).

    Works in one process or under ``torchrun`` (DDP). In fp16 mode the model comes back in fp32 holding the
    master weights (fp16 is a training-time storage format); ``loss_fn`` must then feed the model inputs in
    the model's dtype and should compute the loss on ``logits.float()``. Raises ``TrainingError`` on a
    non-finite loss in fp32/bf16 (naming the 0-based step) and ``CheckpointError`` if ``resume`` finds no
    checkpoint.
    """
    ddp = _setup_distributed()
    mp: MixedPrecision | None = None
    try:
        mp = _prepare_precision(model, cfg, ddp)
        return _run(model, loss_fn, batches, cfg, val_batches, resume, ddp, mp)
    finally:
        if mp is not None:
            mp.restore_fp32_model()
        if ddp.created_group:
            dist.destroy_process_group()


def _prepare_precision(model: nn.Module, cfg: TrainConfig, ddp: _Distributed) -> MixedPrecision:
    if ddp.enabled and torch.cuda.is_available():
        model.to(torch.device("cuda", ddp.local_rank))
    if ddp.enabled:
        # Same starting weights on every rank *before* fp16 masters are cloned (DDP only syncs the module).
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
    device = next(model.parameters()).device
    mp = MixedPrecision(cfg.precision, device_type=device.type)
    mp.prepare(model)
    return mp


def _run(
    model: nn.Module,
    loss_fn: LossFn,
    batches: BatchFn,
    cfg: TrainConfig,
    val_batches: ValBatchFn | None,
    resume: bool,
    ddp: _Distributed,
    mp: MixedPrecision,
) -> TrainResult:
    device = next(model.parameters()).device
    rows = cfg.batch_size // cfg.grad_accum_steps  # global rows per micro-step
    if rows % ddp.world_size:
        raise ConfigError(
            f"TrainConfig.batch_size // grad_accum_steps = {rows} rows per micro-step is not divisible by "
            f"WORLD_SIZE={ddp.world_size}"
        )
    optimizer = torch.optim.AdamW(
        _param_groups(mp.named_master_parameters, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )
    checkpoint_dir = Path(cfg.out_dir) / "checkpoint" if cfg.out_dir is not None else None
    start = _resume(checkpoint_dir, optimizer, mp) if resume else _fresh_start(cfg)

    train_model: nn.Module = model
    if ddp.enabled:
        device_ids = [ddp.local_rank] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    model.train()
    result = TrainResult(start_step=start)
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    bar = tqdm(total=end, initial=start, desc="train", disable=not (cfg.progress and ddp.is_main))
    k = cfg.grad_accum_steps
    t0 = time.perf_counter()
    for step in range(start, end):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(
                step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps
            )
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.float64, device=device)
        for micro in range(k):
            batch = _local_rows(
                batches(step, micro), rows, ddp, device, f"batches(step={step}, micro_step={micro})"
            )
            # Skip DDP's gradient all-reduce on all but the last micro-step: grads accumulate locally first.
            sync = train_model.no_sync() if ddp.enabled and micro < k - 1 else contextlib.nullcontext()
            with sync:
                with mp.autocast():
                    loss, num_tokens = loss_fn(train_model, batch)
                mp.backward(loss / k)  # mean of k micro-batch means = full-batch mean (see module docstring)
            loss_sum += loss.detach().double()
            tokens += float(num_tokens)
        stats = torch.stack([loss_sum / k, tokens * ddp.world_size])
        step_loss, step_tokens = (float(v) for v in _all_reduce_mean(stats, ddp))
        # fp16 overflow is the loss scaler's business (skip and back off); elsewhere it is a real divergence.
        if mp.mode != "fp16" and not math.isfinite(step_loss):
            raise TrainingError(
                f"non-finite training loss ({step_loss}) at step {step}; last checkpoint kept"
            )
        outcome = mp.step(optimizer, cfg.grad_clip)
        mp.zero_grad(optimizer)
        if outcome.skipped:
            if mp.mode != "fp16":
                raise TrainingError(f"non-finite gradient norm at step {step}; last checkpoint kept")
            result.skipped_steps += 1
        result.train_losses.append(step_loss)
        result.grad_norms.append(outcome.grad_norm)
        result.tokens += int(step_tokens)
        done = step + 1
        elapsed = time.perf_counter() - t0
        tokens_per_s = result.tokens / elapsed if elapsed > 0 else 0.0
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
        bar.update(1)
        if ddp.is_main and cfg.log_every and (done % cfg.log_every == 0 or done == end):
            logger.info(
                "step %d/%d loss %.4f lr %.3g grad_norm %.3g tokens/s %.0f",
                done,
                cfg.steps,
                step_loss,
                optimizer.param_groups[0]["lr"],
                outcome.grad_norm,
                tokens_per_s,
            )
        if val_batches is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == end):
            val = _evaluate(model, loss_fn, val_batches, cfg, mp, ddp, device)
            result.val_losses.append((done, val))
            if ddp.is_main:
                logger.info("step %d val_loss %.4f", done, val)
        if checkpoint_dir is not None and (
            done == end or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        ):
            _save(checkpoint_dir, done, optimizer, mp, cfg, ddp)
            result.checkpoint_dir = str(checkpoint_dir)
    bar.close()
    result.wall_s = time.perf_counter() - t0
    result.tokens_per_s = result.tokens / result.wall_s if result.wall_s > 0 else 0.0
    result.final_scale = mp.scaler.scale if mp.mode == "fp16" else None
    result.optimizer_state_bytes = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )
    return result


def _fresh_start(cfg: TrainConfig) -> int:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 -- seeds the global RNG that user code may use
    return 0


def _resume(checkpoint_dir: Path | None, optimizer: torch.optim.Optimizer, mp: MixedPrecision) -> int:
    """Restore weights, optimizer, loss scaler and RNG states; return the step to continue from."""
    if checkpoint_dir is None:
        raise ConfigError(
            "train(resume=True) needs TrainConfig.out_dir (the run directory holding checkpoint/)"
        )
    ckpt = load_checkpoint(checkpoint_dir)  # CheckpointError naming the path if absent
    try:
        mp.load_fp32_state_dict(ckpt.weights)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} does not fit this model/optimizer: {exc}"
        ) from exc
    mp.load_state_dict(ckpt.trainer_state.get("precision", {"mode": mp.mode}))
    if ckpt.rng is not None:
        set_rng_state(ckpt.rng)
    logger.info("resumed from %s at step %d", checkpoint_dir, ckpt.step)
    return ckpt.step


def _save(
    checkpoint_dir: Path,
    step: int,
    optimizer: torch.optim.Optimizer,
    mp: MixedPrecision,
    cfg: TrainConfig,
    ddp: _Distributed,
) -> None:
    """Rank 0 writes (atomically); the others wait so that no rank runs ahead of a half-written checkpoint."""
    if ddp.is_main:
        save_checkpoint(
            checkpoint_dir,
            mp.fp32_state_dict(),
            step,
            optimizer=optimizer,
            trainer_state={"precision": mp.state_dict()},
            metadata={"train_config": to_dict(cfg)},
        )
        logger.info("checkpoint at step %d -> %s", step, checkpoint_dir)
    if ddp.enabled:
        dist.barrier()
