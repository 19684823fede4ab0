"""Medusa (Cai et al. 2024, arXiv:2401.10774): extra decoding heads verified in one tree-attention forward.

``heads.py`` (the heads, attach/save/load), ``tree.py`` (candidate trees), ``train.py`` (Medusa-1 training
on a frozen base), ``decode.py`` (the decoding loop). The public names are re-exported here.
"""

from papernotes.llm.generation.medusa.decode import (
    evaluate_posterior,
    generate_candidates,
    medusa_generate,
    resolve_tree,
    tree_decode,
    typical_acceptance,
    update_inputs,
)
from papernotes.llm.generation.medusa.heads import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    MedusaConfig,
    MedusaHead,
    MedusaHeads,
    ResidualBlock,
    add_medusa_heads,
    check_heads_fit,
    load_medusa_heads,
    save_medusa_heads,
)

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "MedusaConfig",
    "MedusaHead",
    "MedusaHeads",
    "ResidualBlock",
    "add_medusa_heads",
    "check_heads_fit",
    "evaluate_posterior",
    "generate_candidates",
    "load_medusa_heads",
    "medusa_generate",
    "resolve_tree",
    "save_medusa_heads",
    "tree_decode",
    "typical_acceptance",
    "update_inputs",
]
