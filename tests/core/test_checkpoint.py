"""Atomic checkpoint writes, tied-weight safetensors round trips, weights_only loading, RNG state."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from papernotes.core import checkpoint
from papernotes.core.checkpoint import (
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from papernotes.core.files import atomic_write_dir, atomic_write_file
from papernotes.errors import CheckpointError


class TiedLM(nn.Module):
    """Embedding and output head share one Parameter, as Llama does with tie_word_embeddings."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.embed_tokens(tokens)))


def leftovers(parent):
    """Hidden temp/backup entries that a finished write must not leave behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_write_dir_replaces_old_directory_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_write_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with atomic_write_dir(target) as tmp:
        assert (target / "a.txt").read_text() == "old"  # the old one stays until the new one is complete
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert leftovers(tmp_path) == []


def test_atomic_write_dir_failure_keeps_old_directory_and_removes_temp(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_write_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk on fire")
    assert (target / "a.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_crash_between_the_two_renames_is_recovered_on_load(tmp_path):
    target = tmp_path / "ckpt"
    model = nn.Linear(3, 2)
    save_checkpoint(target, model.state_dict(), step=7)
    # Simulate a crash right after the old directory was moved aside and before the new one arrived.
    target.rename(tmp_path / ".ckpt.old")
    assert load_checkpoint(target).step == 7
    assert leftovers(tmp_path) == []


def test_atomic_write_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "report.json"
    with atomic_write_file(target) as tmp:
        tmp.write_text('{"v": 1}')
    with pytest.raises(ValueError), atomic_write_file(target) as tmp:
        tmp.write_text('{"v": ')
        raise ValueError("serialiser failed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert leftovers(tmp_path) == []


def test_tied_weights_are_stored_once_and_restored_under_both_names(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    save_weights(tmp_path / "model.safetensors", model.state_dict())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert len(stored & {"embed_tokens.weight", "lm_head.weight"}) == 1  # shared storage written once
    state = load_weights(tmp_path / "model.safetensors")
    assert set(state) == set(model.state_dict())
    fresh = TiedLM()
    fresh.load_state_dict(state)
    assert fresh.lm_head.weight is fresh.embed_tokens.weight  # the tie survives loading
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(fresh(tokens), model(tokens))


def test_checkpoint_files_load_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()
    save_checkpoint(
        tmp_path / "c",
        model.state_dict(),
        step=3,
        optimizer=optimizer,
        trainer_state={"precision": {"mode": "fp32", "scaler": {}}},
        metadata={"note": "x"},
    )
    # Every pickle-based file opens under the safe loader (tensors and plain containers only).
    optimizer_state = torch.load(tmp_path / "c" / "optimizer.pt", weights_only=True)
    trainer_state = torch.load(tmp_path / "c" / "trainer_state.pt", weights_only=True)
    assert trainer_state["step"] == 3
    assert set(trainer_state["rng"]) >= {"torch", "python", "numpy"}
    meta = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    assert meta["step"] == 3 and meta["note"] == "x"
    loaded = load_checkpoint(tmp_path / "c")
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.optimizer_state)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer_state["state"][0]["exp_avg"])


def test_interrupted_weight_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = nn.Linear(4, 4)
    save_checkpoint(tmp_path / "checkpoint", model.state_dict(), step=1)
    old = {k: v.clone() for k, v in model.state_dict().items()}

    def crashing_writer(path, state, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)  # half a file
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(checkpoint, "save_weights", crashing_writer)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="mid-write"):
        save_checkpoint(tmp_path / "checkpoint", model.state_dict(), step=2)
    loaded = load_checkpoint(tmp_path / "checkpoint")
    assert loaded.step == 1
    assert all(torch.equal(loaded.weights[k], v) for k, v in old.items())
    assert leftovers(tmp_path) == []


def test_missing_checkpoint_raises_checkpoint_error_naming_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nowhere")):
        load_checkpoint(tmp_path / "nowhere")


def test_corrupt_weights_raise_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path / "c", nn.Linear(2, 2).state_dict(), step=1)
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "c")


def test_rng_state_round_trip_reproduces_all_generators():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002 -- the global RNG is what checkpoints restore
    state = rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
