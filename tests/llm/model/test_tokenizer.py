import pytest
import transformers

from papernotes.errors import CheckpointError
from papernotes.llm.data.corpus import iter_documents
from papernotes.llm.model.tokenizer import (
    BOS,
    EOS,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

TEXT = "def f(x):\n    return x * 2  # ünïcödé → 🙂\n"


@pytest.fixture(scope="module")
def tokenizer():
    docs = [d.text for d in iter_documents(max_bytes=300_000)]
    return train_tokenizer(docs, vocab_size=600)


def test_byte_level_bpe_round_trips_any_text(tokenizer):
    assert tokenizer.decode(tokenizer.encode(TEXT).ids) == TEXT
    assert tokenizer.get_vocab_size() == 600
    assert tokenizer.token_to_id(BOS) == 0 and tokenizer.token_to_id(EOS) == 1


def test_transformers_loads_the_saved_tokenizer_with_identical_ids(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.encode(TEXT, add_special_tokens=False) == tokenizer.encode(TEXT).ids
    assert hf.eos_token == EOS and hf.bos_token == BOS
    assert load_tokenizer(tmp_path).encode(TEXT).ids == tokenizer.encode(TEXT).ids


def test_encode_documents_separates_with_eos(tokenizer):
    stream = encode_documents(tokenizer, ["a = 1", "b = 2"])
    assert (stream == tokenizer.token_to_id(EOS)).sum() == 2
    assert stream[-1] == tokenizer.token_to_id(EOS)


def test_missing_or_corrupt_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.json does not exist"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizers JSON"):
        load_tokenizer(tmp_path)
