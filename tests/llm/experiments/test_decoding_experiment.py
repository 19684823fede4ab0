"""llm-decoding gives the base it shares with later experiments back as it was loaded."""

import pytest
import torch

from papernotes.core.config import preset
from papernotes.core.experiments import ExperimentContext
from papernotes.llm.experiments import decoding
from papernotes.llm.experiments.target import Base
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.nn.fast_linear import Linear
from papernotes.nn.linear_tuning import tune_linears


def _plans(model):
    return [m.plan for m in model.modules() if isinstance(m, Linear)]


@pytest.mark.parametrize("fails", [False, True])
def test_tuned_forms_are_cleared_from_the_shared_base(tmp_path, monkeypatch, fails):
    torch.manual_seed(0)
    model = Llama(preset(PRESETS, "tiny")).eval()
    base = Base(tmp_path, tmp_path, model, None, None, key="k")
    ctx = ExperimentContext(size="tiny", out_dir=tmp_path, cache_dir=tmp_path, shared={"base": base})

    def run(ctx, base):  # stands in for the experiment: it tunes the shared base, then ends or fails
        tune_linears(base.model, rows=(1, 2), repeats=1, cache_dir=tmp_path / "kernels")
        assert any(plan is not None for plan in _plans(base.model))
        if fails:
            raise RuntimeError("the benchmark failed")
        return "result"

    monkeypatch.setattr(decoding, "_run", run)
    if fails:
        with pytest.raises(RuntimeError):
            decoding.run_decoding(ctx)
    else:
        assert decoding.run_decoding(ctx) == "result"
    assert _plans(model) and all(plan is None for plan in _plans(model))
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, Linear))  # row-major again
