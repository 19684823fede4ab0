"""Helper for test_distributed.py: the same toy run in one process or under torchrun (2 gloo ranks).

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 tests/core/ddp_worker.py OUT_DIR
Rank 0 writes OUT_DIR/result.json (per-step losses) and OUT_DIR/weights.safetensors.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from papernotes.core.train import TrainConfig, TrainResult, train

VOCAB, SEQ = 16, 8


class ToyLM(nn.Module):
    """Dropout-free embedding -> MLP -> head, so every rank computes deterministically."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.mix = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(tokens)  # (B, T, D)
        return self.lm_head(hidden + torch.tanh(self.mix(hidden)))  # (B, T, V)


def config(out_dir: str | None) -> TrainConfig:
    # 16 rows per step in 2 micro-steps of 8 rows; under 2 ranks each rank gets 4 rows per micro-step.
    return TrainConfig(
        steps=6,
        batch_size=16,
        grad_accum_steps=2,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        eval_every=3,
        eval_batches=2,
        checkpoint_every=3,
        out_dir=out_dir,
        log_every=0,
        progress=False,
    )


def batches(step: int, micro_step: int) -> dict[str, torch.Tensor]:
    """The GLOBAL micro-batch (8 rows): a pure function of (step, micro_step)."""
    g = torch.Generator().manual_seed(1000 * step + micro_step)
    tokens = torch.randint(0, VOCAB, (8, SEQ + 1), generator=g)  # (B, T + 1)
    tokens[:, 1:] = (5 * tokens[:, :-1] + 3) % VOCAB  # a learnable next-token rule
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


def val_batches(i: int) -> dict[str, torch.Tensor]:
    return batches(10_000 + i, 0)


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    logits = model(batch["input_ids"])  # (B, T, V)
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1))  # (B*T, V)
    return loss, batch["labels"].numel()


def run(out_dir: str | None) -> tuple[TrainResult, ToyLM]:
    torch.manual_seed(0)
    model = ToyLM()
    return train(model, loss_fn, batches, config(out_dir), val_batches=val_batches), model


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    result, model = run(str(out / "run"))
    if torch.distributed.is_initialized():
        raise RuntimeError("train() should have destroyed the process group it created")
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"world_size": int(os.environ.get("WORLD_SIZE", "1"))}
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors")
        )
        summary.update(train_losses=result.train_losses, val_losses=result.val_losses, tokens=result.tokens)
        (out / "result.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
