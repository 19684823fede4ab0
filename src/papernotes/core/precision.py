"""Mixed-precision training: fp16 storage with fp32 master weights and dynamic loss scaling, or bf16 autocast.

Paper: Micikevicius et al. 2018, "Mixed Precision Training", arXiv 1710.03740.

Idea (fp16 mode, paper Fig. 1 and Sec. 3):
  1. Weights, activations and gradients are stored in fp16 (half the memory and bandwidth).
  2. The optimizer updates an fp32 *master copy* of the weights (Sec. 3.1): an update
     lr * g is often below half an fp16 ulp of the weight, so adding it in fp16 would round it away.
  3. The loss is multiplied by a scale S before backward (Sec. 3.2). Every gradient is then S times larger,
     which lifts small gradients out of the fp16 subnormal range (|g| < 2^-24 rounds to 0) instead of
     losing them. Gradients are divided by S again in fp32 before the update:

         g_master = fp32(grad_fp16(S * L)) / S        w_master <- optimizer(w_master, g_master)
         w_fp16   = fp16(w_master)

  4. S is chosen dynamically, with the rules of ``torch.amp.GradScaler``: if any gradient is inf/NaN the
     step is skipped and S <- S * backoff; after ``growth_interval`` clean steps in a row, S <- S * growth.

bf16 has fp32's exponent range, so gradients do not underflow and no scaling is needed: the weights stay
fp32 and ``torch.autocast`` runs matmuls in bf16.

bf16 pays only where the hardware computes it natively (AVX-512 BF16 or AMX on x86 CPUs, Ampere+ GPUs).
Elsewhere torch emulates it, and on an AVX2-only CPU bf16 autocast trains about 14x slower than fp32. The
mode "auto", every recipe's default, is therefore bf16 where :func:`native_bf16` holds and fp32 otherwise
(saying so once in the log); "bf16" still forces it.

Tests compare ``DynamicLossScaler`` step for step with ``torch.amp.GradScaler("cpu")`` under injected
overflows (scale trajectory, skipped steps and resulting weights), check that fp16 training with master
weights reaches the fp32 loss, and show gradient underflow without scaling.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from papernotes.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISION_MODES = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 where it is native, else fp32


@functools.cache
def native_bf16(device_type: str = "cpu") -> bool:
    """True when bf16 matrix multiplies run natively here (not emulated through fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def cpu_capability() -> str:
    """The instruction set torch dispatches to on this CPU ("AVX2", "AVX512", ...)."""
    return torch.backends.cpu.get_cpu_capability()


@functools.cache
def _say_fp32_instead(device_type: str) -> None:
    logger.warning(
        "precision auto: bf16 is emulated on this %s (%s, no native bf16), so training runs in fp32; "
        "pass --precision bf16 (precision='bf16') to force it",
        device_type.upper() if device_type != "cpu" else "CPU",
        cpu_capability() if device_type == "cpu" else device_type,
    )


def resolve_precision(mode: str, device_type: str = "cpu") -> str:
    """The mode to train in: ``mode`` itself, or for "auto" bf16 if it is native here, else fp32."""
    if mode not in PRECISION_MODES:
        raise ConfigError(f"precision: unknown mode {mode!r}; expected one of {', '.join(PRECISION_MODES)}")
    if mode != "auto":
        return mode
    if native_bf16(device_type):
        return "bf16"
    _say_fp32_instead(device_type)
    return "fp32"


class DynamicLossScaler:
    """Dynamic loss scaling with the semantics of ``torch.amp.GradScaler`` (paper Sec. 3.2).

    The scale is a power of two in practice, so scaling and unscaling are exact in floating point.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0 or growth_interval < 1:
            raise ConfigError(
                "DynamicLossScaler: expected growth_factor > 1, 0 < backoff_factor < 1, "
                f"growth_interval >= 1, got {growth_factor}, {backoff_factor}, {growth_interval}"
            )
        self.enabled = enabled
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self._scale = float(init_scale)
        self._growth_tracker = 0  # clean steps since the last change of scale

    @property
    def scale(self) -> float:
        """The current loss scale S (1.0 when disabled)."""
        return self._scale if self.enabled else 1.0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """S * loss, computed in fp32 so that the scaled loss itself cannot overflow fp16 (max 65504)."""
        if not self.enabled:
            return loss
        return loss.float() * self._scale

    def unscale_(self, grads: Iterable[torch.Tensor]) -> bool:
        """Divide ``grads`` by S in place; return True if any of them holds an inf or NaN."""
        grads = list(grads)
        if not grads:
            return False
        if self.enabled:
            # Same rounding as GradScaler: the reciprocal in float64, then applied as an fp32 factor.
            inv_scale = float(torch.tensor(1.0 / self._scale, dtype=torch.float64).float())
            torch._foreach_mul_(grads, inv_scale)
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        return not bool(finite.all())

    def update(self, found_inf: bool) -> None:
        """Adjust S after a step: back off on overflow, grow after ``growth_interval`` clean steps."""
        if not self.enabled:
            return
        if found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            grown = self._scale * self.growth_factor
            # Like GradScaler: never grow the scale past the fp32 range to inf.
            if math.isfinite(float(torch.tensor(grown, dtype=torch.float32))):
                self._scale = grown
            self._growth_tracker = 0

    def state_dict(self) -> dict[str, Any]:
        """The scaler state, with GradScaler's key names (plain floats and ints)."""
        if not self.enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (or from ``GradScaler.state_dict()``)."""
        if not state:
            return
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])


@dataclass
class StepOutcome:
    """What one optimizer step did."""

    grad_norm: float  # global L2 norm of the unscaled gradients before clipping (inf/nan on overflow)
    skipped: bool  # True when the gradients were not finite and the optimizer was not stepped


class MixedPrecision:
    """The precision policy the training loop follows: "fp32", "bf16" (autocast) or "fp16" (master weights);
    "auto" resolves to bf16 or fp32 (:func:`resolve_precision`).

    Use: ``named = mp.prepare(model)``; build the optimizer on ``named``; per micro-step run the forward under
    ``mp.autocast()`` and call ``mp.backward(loss)``; then ``mp.step(optimizer, grad_clip)`` and
    ``mp.zero_grad(optimizer)``. After fp16 training, :meth:`fp32_state_dict` gives the master weights for
    export and :meth:`restore_fp32_model` turns the model back into fp32 holding them.

    The loss function should compute its reduction (softmax / cross-entropy) in fp32, e.g. on
    ``logits.float()``: the paper (Sec. 3.3) keeps reductions in fp32 because fp16 sums lose precision.
    """

    def __init__(
        self, mode: str = "fp32", device_type: str = "cpu", scaler: DynamicLossScaler | None = None
    ) -> None:
        mode = resolve_precision(mode, device_type)  # "auto" becomes what this hardware runs fast
        self.mode = mode
        self.device_type = device_type
        # Only fp16 needs loss scaling: bf16 and fp32 share fp32's exponent range.
        self.scaler = scaler if scaler is not None else DynamicLossScaler(enabled=mode == "fp16")
        self._model: nn.Module | None = None
        self._pairs: list[tuple[nn.Parameter, nn.Parameter]] = []  # (model parameter, master parameter)
        self._names: list[str] = []  # canonical name of each pair's parameter

    def prepare(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Set the model up for this mode; return the named parameters the optimizer must update.

        fp16: fp32 masters are cloned from the model's *current* (fp32) weights, then the model is cast to
        fp16. Tied parameters appear once. Other modes return the model's own parameters.
        """
        self._model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        if self.mode != "fp16":
            self._pairs = [(p, p) for _, p in named]
            return named
        masters = [nn.Parameter(p.detach().float().clone()) for _, p in named]
        model.half()  # fp16 storage of weights and buffers (paper Sec. 3)
        self._pairs = [(p, m) for (_, p), m in zip(named, masters)]
        return list(zip(self._names, masters))

    @property
    def master_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (fp32 copies in fp16 mode)."""
        return [m for _, m in self._pairs]

    @property
    def named_master_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``master_parameters`` with the model's parameter names (what :meth:`prepare` returned)."""
        return list(zip(self._names, self.master_parameters))

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context for forward passes: bf16 autocast, or nothing (fp16 weights are already fp16)."""
        if self.mode == "bf16":
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (scaled, in fp16 mode) loss; gradients accumulate into the model's ``.grad``."""
        self.scaler.scale_loss(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, grad_clip: float | None = None) -> StepOutcome:
        """Unscale, check, clip and apply the accumulated gradients (skipping the update on inf/NaN)."""
        if self.mode == "fp16":
            # fp16 model grads -> fp32 master grads; unscaling happens in fp32, where g/S cannot underflow.
            for p, m in self._pairs:
                m.grad = None if p.grad is None else p.grad.detach().float()
        grads = [m.grad for _, m in self._pairs if m.grad is not None]
        found_inf = self.scaler.unscale_(grads)
        norm = torch.tensor(float("inf")) if found_inf else torch.nn.utils.get_total_norm(grads)
        grad_norm = float(norm)
        skipped = not math.isfinite(grad_norm)
        if not skipped:
            if grad_clip:
                # Clip the global norm of the *unscaled* fp32 grads (GradScaler recipe: unscale, then clip).
                torch.nn.utils.clip_grads_with_norm_(self.master_parameters, grad_clip, norm)
            optimizer.step()
            if self.mode == "fp16":
                self._copy_masters_to_model()
        elif self.mode == "fp16":
            logger.debug("fp16 overflow at loss scale %g: step skipped", self.scaler.scale)
        self.scaler.update(skipped)
        return StepOutcome(grad_norm=grad_norm, skipped=skipped)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of the model and (fp16) of the masters."""
        optimizer.zero_grad(set_to_none=True)
        for p, _ in self._pairs:
            p.grad = None

    @torch.no_grad()
    def _copy_masters_to_model(self) -> None:
        for p, m in self._pairs:
            p.copy_(m)  # round-to-nearest fp32 -> fp16

    def fp32_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict in fp32, with the master weights in place of fp16 parameters.

        Tied parameters map to the same tensor under every name (as in ``model.state_dict()``).
        """
        model = self._require_model()
        master_of = {id(p): m for p, m in self._pairs}
        state = {}
        for name, t in model.state_dict(keep_vars=True).items():
            if id(t) in master_of:
                state[name] = master_of[id(t)].detach()
            else:
                state[name] = t.detach().float() if t.is_floating_point() else t.detach()
        return state

    @torch.no_grad()
    def load_fp32_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load fp32 weights (e.g. from :meth:`fp32_state_dict`) into the model and the masters."""
        model = self._require_model()
        model.load_state_dict(state)  # casts to the model's dtype
        if self.mode == "fp16":
            for name, (_, m) in zip(self._names, self._pairs):
                m.copy_(state[name])

    def restore_fp32_model(self) -> None:
        """fp16 mode: cast the model back to fp32 and write the master weights into it (for export)."""
        if self.mode != "fp16" or self._model is None:
            return
        state = self.fp32_state_dict()
        self._model.float()
        self._model.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """State for checkpoints: the mode and the loss scaler."""
        return {"mode": self.mode, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the mode must match."""
        if state.get("mode") != self.mode:
            raise ConfigError(
                f"precision: checkpoint was written in {state.get('mode')!r} mode, not {self.mode!r}"
            )
        self.scaler.load_state_dict(state.get("scaler", {}))

    def _require_model(self) -> nn.Module:
        if self._model is None:
            raise ConfigError("MixedPrecision: call prepare(model) first")
        return self._model
