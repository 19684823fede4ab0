"""DDP under torchrun: 2 CPU processes (gloo) reproduce the 1-process run with the same global batch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from papernotes.core.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def load_worker():
    """Import the worker script by path (it is a script for torchrun, not a package module)."""
    spec = importlib.util.spec_from_file_location("papernotes_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_gloo_processes_match_one_process_losses_and_weights(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    # --standalone picks a free localhost port for the rendezvous.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        str(tmp_path / "ddp"),
    ]
    launched = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # The single-process reference runs here while the two ranks run in the background.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, model = load_worker().run(str(tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)

    output, _ = launched.communicate(timeout=120)
    assert launched.returncode == 0, output[-4000:]
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["train_losses"] == pytest.approx(single.train_losses, rel=0, abs=1e-6)
    assert [s for s, _ in ddp["val_losses"]] == [s for s, _ in single.val_losses]
    assert [v for _, v in ddp["val_losses"]] == pytest.approx([v for _, v in single.val_losses], abs=1e-6)
    assert ddp["tokens"] == single.tokens
    ddp_weights = load_file(str(tmp_path / "ddp" / "weights.safetensors"))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=0, atol=1e-6)
    # Rank 0 wrote the final checkpoint, and only one.
    assert load_checkpoint(tmp_path / "ddp" / "run" / "checkpoint").step == 6
    assert sorted(p.name for p in (tmp_path / "ddp" / "run").iterdir()) == ["checkpoint"]
