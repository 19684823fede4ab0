"""DPO: the loss equals trl's on the same log-probabilities; masks, rejection sampling, training, errors."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import trl

from papernotes.errors import DataError
from papernotes.llm.data.chat_format import add_chat_tokens, load_chat_format
from papernotes.llm.data.tasks.instructions import PRESETS as TASK_PRESETS
from papernotes.llm.data.tasks.instructions import make_instructions
from papernotes.llm.experiments.target import default_model_path
from papernotes.llm.generation.responses import Response
from papernotes.llm.model.tokenizer import load_tokenizer, train_tokenizer
from papernotes.llm.training import preference

SPLITS = make_instructions(TASK_PRESETS["tiny"])


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer((t for e in SPLITS["train"] for t in (e.prompt, e.answer)), vocab_size=400)
    add_chat_tokens(tok)
    return tok


def _trl_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta, alpha):
    """trl's DPOTrainer._compute_loss run on given per-token log-probs (its model call stubbed)."""
    rows, length = completion_mask.shape
    outputs = SimpleNamespace(
        log_probs=per_token_logps,
        entropy=torch.zeros(rows, length - 1),
        mean_logits=torch.zeros(rows, length - 1),
        is_top1=torch.zeros(rows, length - 1, dtype=torch.bool),
    )

    def model(**kwargs):
        return outputs

    model.training = False  # read by trl for its metrics' mode
    fake = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid", "sft"], loss_weights=[1.0, alpha], beta=beta, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        label_smoothing=0.0,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(rows, length, dtype=torch.long),
        "attention_mask": torch.ones(rows, length, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return trl.DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False)


def test_dpo_loss_equals_trl_on_the_same_log_probabilities():
    gen = torch.Generator().manual_seed(0)
    pairs, length = 4, 9
    completion_mask = (torch.rand(2 * pairs, length, generator=gen) > 0.3).long()
    completion_mask[:, 0] = 0
    per_token = -torch.rand(2 * pairs, length - 1, generator=gen) * 3 * completion_mask[:, 1:]
    ref = -torch.rand(2 * pairs, generator=gen) * 10
    expected = _trl_loss(per_token, completion_mask, ref[:pairs], ref[pairs:], beta=0.1, alpha=0.2)
    chosen, rejected = per_token[:pairs].sum(1), per_token[pairs:].sum(1)
    nll = -per_token[:pairs].sum() / completion_mask[:pairs, 1:].sum()
    ours = preference.dpo_loss(chosen, rejected, ref[:pairs], ref[pairs:], nll, beta=0.1, alpha=0.2)
    torch.testing.assert_close(ours, expected.float())
    # and by hand for one pair: -log σ(β·margin) with no NLL term
    margin = (chosen[0] - ref[0]) - (rejected[0] - ref[pairs])
    by_hand = -math.log(1 / (1 + math.exp(-0.1 * float(margin))))
    value = preference.dpo_loss(chosen[:1], rejected[:1], ref[:1], ref[pairs : pairs + 1], 0.0)
    assert abs(float(value) - by_hand) < 1e-6


def test_only_the_final_replys_content_counts(tokenizer):
    messages = [
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 plus 3?"},
        {"role": "assistant", "content": "6"},
    ]
    ids, mask = preference.response_mask(tokenizer, messages)
    kept = [t for t, m in zip(ids, mask) if m]
    assert tokenizer.decode(kept, skip_special_tokens=False) == "6"  # no header, no <|eot_id|>, no "4"
    # the same in the base's ChatML template: its default system line and <|im_end|> are not the reply
    path = default_model_path()
    chatml_tokenizer, chatml = load_tokenizer(path), load_chat_format(path)
    ids, mask = preference.response_mask(chatml_tokenizer, messages, chatml)
    assert chatml_tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False) == "6"
    batch = preference.reply_batch(chatml_tokenizer, [messages, messages[:2]], chatml)
    assert batch["input_ids"][1, -1] == chatml.end_of_turn_id(chatml_tokenizer)  # padded with <|im_end|>


def test_rejection_sampling_keeps_the_shortest_correct_answer_and_pairs_it(
    tokenizer, monkeypatch, tiny_llama
):
    examples = [e for e in SPLITS["test"] if e.task == "arithmetic"][:2]
    answer = examples[0].answer
    canned = [
        [
            Response(f"The answer is {answer}.", [1] * 5, True),
            Response(answer, [1], True),
            Response("no", [1], True),
        ],
        [Response("nope", [1], True)] * 3,  # no correct sample: the prompt is dropped
    ]
    monkeypatch.setattr(preference, "respond", lambda *args, **kwargs: canned)
    model = tiny_llama(tokenizer)
    result = preference.rejection_sample(model, tokenizer, examples, k=3)
    assert result.best == [(examples[0], answer)]
    assert result.pairs == [
        preference.PreferencePair(({"role": "user", "content": examples[0].prompt},), answer, "no")
    ]
    assert result.pass_at_k == 0.5 and result.sample_accuracy == pytest.approx(2 / 6)


def test_dpo_raises_the_preference_accuracy_on_its_pairs(tokenizer, tiny_llama):
    # chosen and rejected replies of similar length: the right number against a wrong one
    examples = [e for e in SPLITS["train"] if e.task in ("arithmetic", "convert")][:12]
    pairs = [
        preference.PreferencePair(({"role": "user", "content": e.prompt},), e.answer, str(int(e.answer) + 7))
        for e in examples
    ]
    policy, reference = tiny_llama(tokenizer), tiny_llama(tokenizer)
    before = preference.preference_accuracy(policy, tokenizer, pairs)
    config = preference.DPOConfig(steps=30, batch_size=6, lr=3e-3, precision="fp32")
    losses = preference.dpo(policy, reference, tokenizer, pairs, config, progress=False)
    after = preference.preference_accuracy(policy, tokenizer, pairs)
    assert after > before and after >= 0.9 and losses[-1] < losses[0]


def test_bad_references_and_empty_pairs_are_clear_errors(tokenizer, tiny_llama):
    policy = tiny_llama(tokenizer)
    other = tiny_llama(tokenizer, num_hidden_layers=1)
    pair = preference.PreferencePair(({"role": "user", "content": "hi"},), "a", "b")
    with pytest.raises(DataError, match="does not fit the policy.*num_hidden_layers"):
        preference.dpo(policy, other, tokenizer, [pair], preference.DPOConfig(steps=1))
    with pytest.raises(DataError, match="no preference pairs"):
        preference.dpo(policy, tiny_llama(tokenizer), tokenizer, [], preference.DPOConfig(steps=1))
