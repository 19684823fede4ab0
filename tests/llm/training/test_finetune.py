"""Fine-tuning recipe: target-only labels, the loss, what each method trains, evaluation, and the CLI."""

import json

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from papernotes.cli import main
from papernotes.core.config import preset
from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import ConfigError
from papernotes.llm.data import supervised
from papernotes.llm.data.tasks import table2text
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.model.tokenizer import EOS, train_tokenizer
from papernotes.llm.peft import lora, prefix_tuning
from papernotes.llm.training import finetune
from papernotes.llm.training.pretrain import save_model_dir

TASK = table2text.make_table2text(preset(table2text.PRESETS, "tiny"))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer((r for e in TASK["train"] for r in (e.source, *e.references)), vocab_size=320)


def test_labels_cover_only_the_target_and_predict_the_next_token(tokenizer):
    a = finetune.encode(tokenizer, "name[A]", "A is here.")
    b = finetune.encode(tokenizer, "name[Bee], food[French]", "Bee serves French food.")
    batch = supervised.pad_batch([a, b], pad_token_id=7)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(len(a.ids), len(b.ids)) - 1)
    for row, e in enumerate((a, b)):
        labels = batch["labels"][row]
        kept = labels != IGNORE_INDEX
        assert kept.sum() == len(e.ids) - e.prompt_length  # target tokens and EOS, nothing else
        assert labels[kept].tolist() == e.ids[e.prompt_length :]
        assert labels[kept][-1] == tokenizer.token_to_id(EOS)
    assert tokenizer.decode(a.ids[1 : a.prompt_length]).strip().endswith("=>")


def test_target_loss_equals_cross_entropy_over_target_positions(tokenizer, tiny_llama):
    model = tiny_llama(tokenizer)
    examples = [finetune.encode(tokenizer, e.source, e.target) for e in TASK["train"][:3]]
    batch = supervised.pad_batch(examples, pad_token_id=0)
    loss, count = supervised.target_loss(model, batch)
    logits = model(batch["input_ids"])
    manual = [
        F.cross_entropy(logits[r, t], batch["labels"][r, t])
        for r in range(3)
        for t in range(batch["labels"].shape[1])
        if batch["labels"][r, t] != IGNORE_INDEX
    ]
    assert count == len(manual)
    torch.testing.assert_close(loss, torch.stack(manual).mean())


def test_task_batches_repeat_exactly_for_a_step(tokenizer):
    encoded = [finetune.encode(tokenizer, e.source, e.target) for e in TASK["train"]]
    batches = supervised.TaskBatches(encoded, 4, pad_token_id=0, seed=3)
    assert torch.equal(batches(5, 0)["input_ids"], batches(5, 0)["input_ids"])
    assert not torch.equal(batches(5, 0)["labels"], batches(6, 0)["labels"])


@pytest.mark.parametrize("method", ["full", "lora", "prefix"])
def test_each_method_trains_only_its_parameters_and_lowers_the_loss(tokenizer, method, tiny_llama):
    model = tiny_llama(tokenizer)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = finetune.FinetuneConfig(
        method=method,
        lora=preset(lora.PRESETS, "tiny"),
        prefix=preset(prefix_tuning.PRESETS, "tiny"),
        steps=30,
        batch_size=8,
        precision="fp32",
    )
    result = finetune.finetune(model, tokenizer, TASK["train"], config, progress=False)
    assert sum(result.train_losses[-5:]) < sum(result.train_losses[:5])
    changed = {n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])}
    if method == "full":
        assert result.trainable_parameters == result.base_parameters and changed == set(frozen)
    else:  # the base is untouched; the adapter's parameters are all that the optimizer held
        assert not changed and 0 < result.trainable_parameters < result.base_parameters
    # AdamW keeps two fp32 moments per trained scalar (+ a step counter per tensor)
    assert (
        8 * result.trainable_parameters
        <= result.optimizer_state_bytes
        < 8 * result.trainable_parameters + 4096
    )
    # evaluation scores the greedy outputs it returns: BLEU by sacrebleu over every reference, SER pooled
    examples = TASK["test"][:4]
    metrics, rows = finetune.evaluate(model, tokenizer, examples, max_new_tokens=8)
    outputs = [row["output"] for row in rows]
    assert [(row["source"], row["reference"]) for row in rows] == [(e.source, e.target) for e in examples]
    for example, output in zip(examples, outputs):  # each row alone, unbatched: the same greedy text
        prompt = torch.tensor([finetune.encode(tokenizer, example.source).ids])
        config = GenerationConfig(max_new_tokens=8, eos_token_id=tokenizer.token_to_id(EOS))
        ids = generate(model, prompt, config)[0][0].tolist()
        assert output == tokenizer.decode([t for t in ids if t != tokenizer.token_to_id(EOS)]).strip()
    streams = [list(refs) for refs in zip(*(e.references for e in examples))]  # equal counts here
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, streams).score)
    errors = [table2text.slot_errors(e.record, o) for e, o in zip(examples, outputs)]
    pooled = sum(x.missing + x.added + x.wrong for x in errors) / sum(x.total for x in errors)
    assert metrics["ser"] == pytest.approx(pooled)


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="method must be one of"):
        finetune.FinetuneConfig(method="adapter")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer, tiny_llama):
    directory = tmp_path_factory.mktemp("base") / "model"
    return save_model_dir(tiny_llama(tokenizer), tokenizer, directory)


@pytest.mark.parametrize("method, saved", [("lora", "adapter"), ("prefix", "prefix"), ("full", "model")])
def test_finetune_command_writes_the_result_and_generate_uses_it(model_dir, tmp_path, capsys, method, saved):
    out = tmp_path / "run"
    argv = ["llm", "finetune", "--method", method, "--model", str(model_dir), "--out", str(out)]
    small = ["--steps", "2", "--batch-size", "2", "--eval-size", "3", "--r", "2", "--num-virtual-tokens", "3"]
    assert main([*argv, *small, "--encoder-hidden-size", "16"]) == 0
    info = json.loads((out / "result.json").read_text())
    assert info["method"] == method and len(info["train_losses"]) == 2
    assert set(info["metrics"]) >= {"bleu", "ser"}
    assert "test BLEU" in capsys.readouterr().out
    if method == "full":
        generate = ["llm", "generate", "--model", str(out / saved)]
    else:
        generate = ["llm", "generate", "--model", str(model_dir), "--adapter", str(out / saved)]
    assert main([*generate, "--prompt", "name[A] =>", "--max-new-tokens", "4"]) == 0


def test_generate_with_a_non_adapter_directory_fails_cleanly(model_dir, tmp_path, capsys):
    argv = ["llm", "generate", "--model", str(model_dir), "--adapter", str(tmp_path), "--max-new-tokens", "2"]
    assert main(argv) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_finetune_without_model_starts_from_the_base(model_dir, tmp_path, monkeypatch):
    """Without --model the command loads default_model_path() (the base's GGUF file; here a tiny stand-in)."""
    from papernotes.llm import commands

    monkeypatch.setattr(commands, "default_model_path", lambda: model_dir)
    out = tmp_path / "run"
    argv = ["llm", "finetune", "--method", "lora", "--out", str(out), "--steps", "1", "--batch-size", "2"]
    assert main([*argv, "--eval-size", "2", "--r", "2"]) == 0
    info = json.loads((out / "result.json").read_text())
    assert info["base"] == str(model_dir) and info["format"] == "plain"


@pytest.fixture(scope="module")
def smollm2():
    """The base's tokenizer and ChatML format (read from its GGUF file's cached export; no weights)."""
    from papernotes.llm.data.chat_format import load_chat_format
    from papernotes.llm.experiments.target import default_model_path
    from papernotes.llm.model.tokenizer import load_tokenizer

    path = default_model_path()
    return load_tokenizer(path), load_chat_format(path)


def test_chat_format_puts_the_record_in_the_template_and_learns_only_the_sentence(smollm2):
    tokenizer, chat = smollm2
    example = TASK["train"][0]
    full = finetune.encode(tokenizer, example.source, example.target, chat)
    prompt = finetune.encode(tokenizer, example.source, chat=chat)
    assert full.ids[: len(prompt.ids)] == prompt.ids and prompt.prompt_length == len(prompt.ids)
    learned = [t for t, m in zip(full.ids, full.target_mask()) if m]
    assert tokenizer.decode(learned, skip_special_tokens=False) == example.target + "<|im_end|>"
    text = tokenizer.decode(prompt.ids, skip_special_tokens=False)
    assert finetune.INSTRUCTION in text and example.source in text and "named SmolLM" not in text
    shots = TASK["train"][1:3]
    few = tokenizer.decode(finetune.encode(tokenizer, example.source, chat=chat, shots=shots).ids)
    assert all(s.source in few and s.target in few for s in shots) and few.index(shots[1].target) < few.index(
        example.source
    )
    with pytest.raises(ConfigError, match="few-shot prompts need a chat format"):
        finetune.encode(tokenizer, example.source, shots=shots)
