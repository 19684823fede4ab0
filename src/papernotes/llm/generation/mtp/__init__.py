"""Multi-token prediction (DeepSeek-V3, arXiv:2412.19437, Sec. 2.2): modules, loss, self-speculative decoding.

``modules.py`` (config, the modules, the shared head, save/load), ``loss.py`` (the objective, training
wrappers, training on stored states), ``decode.py`` (the drafting and decoding loop). The public names
are re-exported here.

Tests (``tests/llm/generation/test_mtp.py``): the loss against a hand computation position by
position, gradient flow in the joint and frozen-base modes, greedy ``mtp_generate`` equal to
``generate`` token for token (random, garbage and trained modules, depth 1 and 2), high
acceptance after training on a repetitive sequence, the acceptance rule's output distribution,
and the save/load round trip and its errors.
"""

from papernotes.llm.generation.mtp.decode import mtp_generate
from papernotes.llm.generation.mtp.loss import (
    MTPLosses,
    MTPStateModel,
    MTPTrainingModel,
    depth_accuracy,
    mtp_hidden_states,
    mtp_loss,
    mtp_losses,
    mtp_state_loss,
    mtp_training_loss,
)
from papernotes.llm.generation.mtp.modules import (
    CONFIG_FILE,
    PRESETS,
    WEIGHTS_FILE,
    MTPConfig,
    MTPModule,
    MTPModules,
    add_mtp_modules,
    load_mtp_modules,
    save_mtp_modules,
    shared_logits,
)

__all__ = [
    "CONFIG_FILE",
    "PRESETS",
    "WEIGHTS_FILE",
    "MTPConfig",
    "MTPLosses",
    "MTPModule",
    "MTPModules",
    "MTPStateModel",
    "MTPTrainingModel",
    "add_mtp_modules",
    "depth_accuracy",
    "load_mtp_modules",
    "mtp_generate",
    "mtp_hidden_states",
    "mtp_loss",
    "mtp_losses",
    "mtp_state_loss",
    "mtp_training_loss",
    "save_mtp_modules",
    "shared_logits",
]
