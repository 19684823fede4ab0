"""A linear layer that computes y = x Wᵀ in whichever matrix form was measured fastest.

Why (issue 17, "Make the forward cheap first"): on a CPU the cost of one product with a fixed
weight depends on how the product is handed to BLAS far more than on the bytes it reads. For
SmolLM2's 49152 × 576 head, ``F.linear`` with one row takes twice the time of reading W once, and
with two rows it takes twice the one-row time again, while ``x @ Wᵀ`` from a stored transposed copy
or ``W @ xᵀ`` (the weight as BLAS's left operand) stay close to the read. Which form wins changes
with the shape and the number of rows, so it is measured, not assumed (``linear_tuning``).

Forms (``FORMS``), each computing y = x Wᵀ (+ b) for x (..., K), W (N, K), and what they read:
    linear       F.linear(x, W, b)                       W row-major (PyTorch's default)
    weight_left  (W @ xᵀ)ᵀ, made row-major               W row-major
    transposed   x @ Wᵀ, Wᵀ (K, N) contiguous            W column-major
    packed       oneDNN's linear on a prepacked W        W in oneDNN's blocked layout (a copy)
One copy of each weight, in the layout its forms read: a layer whose forms never read W row-major
stores W column-major (the same Parameter, values and state_dict keys; only its strides change),
and keeps a transposed copy only when it also runs a row-major form. Copies (``DerivedWeight``) are
derived from the weight, never part of the state: ``state_dict()``, parameters and
``isinstance(m, nn.Linear)`` are those of nn.Linear, so HF parity, checkpoints and LoRA see no
difference. A copy is rebuilt whenever the weight changes (a new Parameter, or an in-place edit
such as LoRA's merge), so it can never go stale.

Dispatch: ``Linear.use_forms({rows: form})`` sets a ``LinearPlan``; forward counts the rows
(M = x.numel() / K) and runs the form chosen for M, or for the nearest measured M (in log scale).
The forms run only with autograd off (``torch.no_grad`` / ``inference_mode``, as every decoder
runs): the copies carry no gradient and oneDNN's op has no backward. With autograd on, and without
a plan, forward is exactly ``nn.Linear.forward``.

Exactness: the forms sum the K products in different orders, so outputs differ from F.linear's in
the last bits (tests hold them to fp32 tolerance). The form depends only on M, so plain decoding
and verification that feed the same number of rows run the same form; across different M even
plain ``F.linear`` already switches BLAS kernels (gemv at M = 1, gemm above).

Shapes: M rows (the product of x's leading dimensions), K in_features, N out_features.
"""

from __future__ import annotations

import bisect
import logging
import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import ConfigError

logger = logging.getLogger(__name__)

Form = Callable[["Linear", torch.Tensor], torch.Tensor]


def _linear(module: Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, module.weight, module.bias)


def _weight_left(module: Linear, x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, module.in_features)  # (M, K)
    # (N, K) @ (K, M): BLAS streams W as the left operand, which MKL does well for small M
    y = (module.weight @ x2.T).T  # (M, N), column-major
    # row-major like F.linear's output, so callers may view() it freely; free at M = 1
    y = y.contiguous()
    if module.bias is not None:
        y += module.bias
    return y.view(*x.shape[:-1], module.out_features)  # (..., N)


def _transposed(module: Linear, x: torch.Tensor) -> torch.Tensor:
    # a row-major W with a column-major copy; a column-major W runs _linear instead, whose
    # F.linear(x, W) multiplies by the contiguous Wᵀ: the same BLAS call
    y = x @ module.plan.copies["transposed"].get(module.weight)  # (..., K) @ (K, N) -> (..., N)
    if module.bias is not None:
        y += module.bias
    return y


def _packed(module: Linear, x: torch.Tensor) -> torch.Tensor:
    packed = module.plan.copies["packed"].get(module.weight)
    return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")  # (..., N)


def _transpose_copy(weight: torch.Tensor) -> torch.Tensor:
    return weight.t().contiguous()  # (K, N)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)  # opaque, N × K values


FORMS: dict[str, Form] = {
    "linear": _linear,
    "weight_left": _weight_left,
    "transposed": _transposed,
    "packed": _packed,
}
ROW_MAJOR_FORMS = frozenset({"linear", "weight_left"})  # forms that read W (N, K) row-major
COPY_MAKERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "transposed": _transpose_copy,
    "packed": _pack,
}


def stores_columns(forms: Iterable[str]) -> bool:
    """Whether a layer running ``forms`` stores W column-major: it reads W only transposed."""
    used = set(forms)
    return "transposed" in used and not used & ROW_MAJOR_FORMS


def copies_needed(forms: Iterable[str]) -> list[str]:
    """The copies of W a layer running ``forms`` keeps besides its weight ("transposed", "packed")."""
    used = set(forms)
    copies = ["transposed"] if "transposed" in used and used & ROW_MAJOR_FORMS else []
    return copies + (["packed"] if "packed" in used else [])


def is_column_major(weight: torch.Tensor) -> bool:
    """W (N, K) stored as Wᵀ (K, N) contiguous, and not also row-major (N = 1 or K = 1 are both)."""
    return weight.dim() == 2 and weight.t().is_contiguous() and not weight.is_contiguous()


def available_forms(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> list[str]:
    """The forms that can run on ``device`` in ``dtype`` (oneDNN packing is CPU-only, fp32/bf16)."""
    names = ["linear", "weight_left", "transposed"]
    if (
        torch.device(device).type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
    ):
        names.append("packed")
    return names


class DerivedWeight:
    """A copy of a weight in another layout, rebuilt whenever the weight changes.

    The weight is watched through a weak reference (a replaced Parameter is not kept alive) and its
    version counter (in-place edits bump it). Deep copies and pickles carry no tensor: oneDNN's
    packed tensors cannot be copied, and the copy is rebuilt from the new weight on first use.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.tensor: torch.Tensor | None = None
        self._source: weakref.ref[torch.Tensor] | None = None
        self._version: int | None = None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        """The copy of ``weight``, made now if it is missing or was made from another state."""
        if (
            self.tensor is None
            or self._source is None
            or self._source() is not weight
            or (self._version is not None and weight._version != self._version)
        ):
            self.build(weight)
        return self.tensor

    def build(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            self.tensor = COPY_MAKERS[self.kind](weight.detach())
        self._source = weakref.ref(weight)
        # inference tensors have no version counter (and cannot be edited outside inference mode)
        self._version = None if weight.is_inference() else weight._version

    @property
    def nbytes(self) -> int:
        """Bytes held by the copy (a packed copy is counted as its dense size)."""
        return 0 if self.tensor is None else self.tensor.numel() * self.tensor.element_size()

    def __deepcopy__(self, memo: dict[int, Any]) -> DerivedWeight:
        return DerivedWeight(self.kind)

    def __getstate__(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["kind"])


@dataclass
class LinearPlan:
    """The form to run for each measured row count M, the weight's layout, and the copies of W kept."""

    forms: dict[int, str]  # measured M -> form name
    dtype: torch.dtype  # the weight's dtype and device the choice was made for
    device: torch.device
    columns: bool = False  # store W column-major (set from the forms)
    copies: dict[str, DerivedWeight] = field(default_factory=dict)  # kind -> copy
    _rows: list[int] = field(default_factory=list, repr=False)  # sorted measured M
    table: list[Form] = field(default_factory=list, repr=False)  # [M] -> form, M = 0 .. max measured

    def __post_init__(self) -> None:
        if not self.forms or min(self.forms) < 1:
            raise ConfigError(f"a linear plan needs forms for row counts >= 1, got {self.forms}")
        unknown = sorted(set(self.forms.values()) - set(FORMS))
        if unknown:
            raise ConfigError(f"unknown linear forms {unknown}; expected some of {sorted(FORMS)}")
        self.columns = stores_columns(self.forms.values())
        self.copies = {kind: DerivedWeight(kind) for kind in copies_needed(self.forms.values())}
        self._rows = sorted(self.forms)
        table = {**FORMS, "transposed": _linear} if self.columns else FORMS
        self.table = [_linear] + [table[self.forms[self.nearest(m)]] for m in range(1, self._rows[-1] + 1)]

    def nearest(self, rows: int) -> int:
        """The measured row count closest to ``rows`` in log scale (costs change by factors)."""
        i = bisect.bisect_left(self._rows, rows)
        if i == 0:
            return self._rows[0]
        if i == len(self._rows):
            return self._rows[-1]
        low, high = self._rows[i - 1], self._rows[i]
        return high if math.log(high / rows) < math.log(rows / low) else low

    def form(self, rows: int) -> Form:
        """The form for M = ``rows`` (the largest measured M's form beyond the table)."""
        return self.table[rows] if rows < len(self.table) else self.table[-1]

    @property
    def extra_bytes(self) -> int:
        """Bytes of the copies of W this plan holds."""
        return sum(copy.nbytes for copy in self.copies.values())


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state_dict and init) whose forward follows a measured plan.

    Without a plan, or with autograd on, forward is ``F.linear``. ``use_forms`` sets the plan,
    usually through ``linear_tuning.tune_linears(model)``; it may store the weight column-major.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.plan: LinearPlan | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) -> (..., N)."""
        plan = self.plan
        if plan is None or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        # plan.form(rows), inlined: this runs 211 times per SmolLM2 token
        table, rows = plan.table, x.numel() // self.in_features
        return table[rows if rows < len(table) else -1](self, x)

    def use_forms(self, forms: Mapping[int, str]) -> int:
        """Run ``forms[M]`` for inputs of M rows (nearest measured M otherwise); returns the copies' bytes."""
        return self.set_plan(LinearPlan(dict(forms), self.weight.dtype, self.weight.device))

    def set_plan(self, plan: LinearPlan | None) -> int:
        """Follow ``plan`` (None: plain F.linear, W row-major again); returns the copies' bytes.

        The weight is laid out as the plan reads it, and its copies are made now, so that the first
        forward does not pay for them and the memory is known.
        """
        self._lay_out(columns=plan is not None and plan.columns)
        if plan is not None:
            for copy in plan.copies.values():
                copy.get(self.weight)  # made unless already current (a plan shared by tied layers)
        self.plan = plan
        return 0 if plan is None else plan.extra_bytes

    def clear_forms(self) -> None:
        """Back to plain F.linear with a row-major weight; frees the copies."""
        self.set_plan(None)

    def _lay_out(self, columns: bool) -> None:
        weight = self.weight
        if weight.device.type == "meta" or is_column_major(weight) == columns:
            return
        if weight.is_contiguous() and weight.t().is_contiguous():
            return  # N = 1 or K = 1: both layouts at once
        # .data keeps the Parameter, so a tied embedding follows; inference_mode(False): a normal
        # tensor even when called from inference mode, so that the weight stays usable with autograd
        with torch.no_grad(), torch.inference_mode(False):
            data = weight.detach()
            weight.data = data.t().contiguous().t() if columns else data.contiguous()

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's own signature
        super()._apply(fn, recurse)
        plan = self.plan
        if plan is not None and (self.weight.dtype, self.weight.device) != (plan.dtype, plan.device):
            # the choice was measured for another dtype or device (oneDNN's packing is CPU-only)
            logger.info("dropping the linear plan of a %s weight moved to %s", plan.dtype, self.weight.device)
            self.plan = None
        return self

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.plan is None else f"{text}, forms={self.plan.forms}"


def linear_plans(model: nn.Module) -> dict[str, LinearPlan | None]:
    """The plan of every fast ``Linear`` in ``model`` by module name (None where there is none)."""
    return {name: m.plan for name, m in model.named_modules() if isinstance(m, Linear)}


def set_linear_plans(model: nn.Module, plans: Mapping[str, LinearPlan | None]) -> None:
    """Restore plans saved with ``linear_plans`` (e.g. to time a model with and without them)."""
    modules = dict(model.named_modules())
    for name, plan in plans.items():
        modules[name].set_plan(plan)


def clear_linear_forms(model: nn.Module) -> None:
    """Every fast ``Linear`` of ``model`` back to F.linear; frees the copies."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.clear_forms()
