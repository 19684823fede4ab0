"""The LLM field's experiments for ``papernotes reproduce``, in the order they run.

The models they share (the pretrained base, the pre-trained target, what is trained for them) are owned by
``target.py``.
"""

from papernotes.core.experiments import Experiment, Method
from papernotes.llm.experiments.attention import run_attention
from papernotes.llm.experiments.base import run_base
from papernotes.llm.experiments.decoding import run_decoding
from papernotes.llm.experiments.peft import run_peft
from papernotes.llm.experiments.post_training import run_post_training
from papernotes.llm.experiments.pretrain import run_pretrain

LLM = "Large Model"  # the notes' category for every LLM method

EXPERIMENTS = [
    Experiment(
        "llm-base",
        "llm",
        "the pretrained base (SmolLM2-135M-Instruct, GGUF): replies, parity with HF, speed, perplexity",
        run_base,
        (Method("Llama 3", LLM, "llama3.md"),),
    ),
    Experiment(
        "llm-pretrain",
        "llm",
        "pre-train the target Llama in fp32, bf16 and fp16 (+fp32 master weights)",
        run_pretrain,
        (Method("Mixed precision", LLM, "mixed_precision.md", "loss_curves.png"),),
    ),
    Experiment(
        "llm-attention",
        "llm",
        "naive vs FlashAttention (ours) vs SDPA: time and memory against N",
        run_attention,
        (Method("FlashAttention", LLM, "flash_attention.md", "attention.png"),),
    ),
    Experiment(
        "llm-decoding",
        "llm",
        "speculative, prompt lookup, Medusa and MTP decoding vs plain decoding (and HF generate)",
        run_decoding,
        (
            Method("Speculative decoding", LLM, "speculative_decoding.md", "decoding_speedup.png"),
            Method("Medusa", LLM, "medusa.md", "decoding_speedup.png"),
            Method("Multi-token prediction", LLM, "multi_token_prediction.md", "decoding_speedup.png"),
        ),
    ),
    Experiment(
        "llm-peft",
        "llm",
        "full fine-tuning vs LoRA (r = 4, 8, 16) vs Prefix-Tuning (L = 5, 10, 20) on table-to-text",
        run_peft,
        (
            Method("LoRA", LLM, "lora.md", "peft_comparison.png"),
            Method("Prefix-Tuning", LLM, "prefix_tuning.md", "peft_comparison.png"),
        ),
    ),
    Experiment(
        "llm-post-training",
        "llm",
        "Llama 3 post-training: base -> SFT -> rejection-sampling SFT -> DPO on verifiable instruction tasks",
        run_post_training,
        (Method("Llama 3 post-training", LLM, "post_training.md", "post_training.png"),),
    ),
]
