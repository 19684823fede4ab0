import numpy as np
import pytest
import torch

from papernotes.core.config import preset
from papernotes.llm.generation.benchmark import benchmark_decoders, validation_prompts
from papernotes.llm.generation.generate import generate
from papernotes.llm.generation.hf_reference import hf_decoder, load_hf_model
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = Llama(preset(PRESETS, "tiny")).eval()
    return model, model.save_pretrained(tmp_path_factory.mktemp("tiny"))


def test_validation_prompts_are_fixed_windows():
    tokens = np.arange(1000, dtype=np.int32)
    a, b = validation_prompts(tokens, 3, 16, seed=1), validation_prompts(tokens, 3, 16, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(
        p.shape == (1, 16) and torch.equal(p[0, 1:] - p[0, :-1], torch.ones(15, dtype=torch.long)) for p in a
    )


def test_benchmark_reports_speedup_and_hf_greedy_matches_ours(model_dir):
    model, directory = model_dir
    hf = load_hf_model(directory)
    decoders = {
        "plain": lambda ids, cfg: generate(model, ids, cfg),
        "hf": hf_decoder(hf),
        "hf-assisted": hf_decoder(hf, assistant=load_hf_model(directory), num_assistant_tokens=3),
    }
    prompts = [torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    rows = benchmark_decoders(decoders, prompts, temperatures=(0.0, 0.8), max_new_tokens=12)
    by = {(r["method"], r["temperature"]): r for r in rows}
    assert by[("plain", 0.0)]["speedup"] == 1.0 and by[("plain", 0.0)]["matches_plain"]
    assert by[("plain", 0.0)]["tokens"] == 36 and by[("plain", 0.0)]["tokens_per_call"] == 1.0
    # same weights, same greedy rule: HF's plain and assisted generation reproduce our tokens
    assert by[("hf", 0.0)]["matches_plain"] and by[("hf-assisted", 0.0)]["matches_plain"]
    assert by[("hf", 0.8)]["matches_plain"] is None and by[("hf", 0.8)]["tokens"] == 36


def test_warm_up_runs_each_decoder_once_more_unless_switched_off(model_dir):
    model, _ = model_dir
    calls = []

    def plain(ids, cfg):
        calls.append(cfg.max_new_tokens)
        return generate(model, ids, cfg)

    prompts = [torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    benchmark_decoders({"plain": plain}, prompts, temperatures=(0.0,), max_new_tokens=10)
    assert calls == [8, 10, 10]  # a short warm-up, then one run per prompt
    calls.clear()
    benchmark_decoders({"plain": plain}, prompts, temperatures=(0.0,), max_new_tokens=10, warm_up=False)
    assert calls == [10, 10]
