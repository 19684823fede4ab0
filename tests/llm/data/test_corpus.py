import numpy as np
import pytest
import torch

from papernotes.errors import DataError
from papernotes.llm.data.corpus import LMBatches, is_validation, iter_documents, split_documents


def test_stdlib_corpus_is_found_and_excludes_test_suites():
    docs = list(iter_documents(max_bytes=200_000))
    assert sum(len(d.text) for d in docs) >= 200_000
    assert all(not d.name.startswith(("test/", "idlelib/")) for d in docs)
    assert all(d.name.endswith(".py") for d in docs)


def test_split_is_deterministic_and_by_file_name():
    docs = list(iter_documents(max_bytes=2_000_000))
    train, val = split_documents(docs)
    train2, val2 = split_documents(list(iter_documents(max_bytes=2_000_000)))
    assert [d.name for d in val] == [d.name for d in val2]
    assert {d.name for d in train}.isdisjoint({d.name for d in val})
    assert all(is_validation(d.name) for d in val)
    assert 0.01 < len(val) / len(docs) < 0.15


def test_user_text_dir_and_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        list(iter_documents(tmp_path / "missing"))
    with pytest.raises(DataError, match="no files ending"):
        list(iter_documents(tmp_path))
    (tmp_path / "a.txt").write_text("hello world")
    assert [d.name for d in iter_documents(tmp_path)] == ["a.txt"]


def test_lm_batches_are_deterministic_shifted_windows():
    tokens = np.arange(1000, dtype=np.int32)
    batches = LMBatches(tokens, micro_batch_size=4, seq_len=16, seed=3)
    a, b = batches(5, 1), batches(5, 1)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], batches(6, 1)["input_ids"])
    assert a["input_ids"].shape == (4, 16)
    assert torch.equal(a["labels"], a["input_ids"] + 1)  # labels are the next tokens
    with pytest.raises(DataError, match="shorter than seq_len"):
        LMBatches(tokens[:10], 1, 16)


def test_small_corpus_still_gets_a_validation_file(tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text(f"text {i}")
    docs = list(iter_documents(tmp_path))
    train, val = split_documents(docs)
    assert len(val) == 1 and len(train) == 2
    assert split_documents(docs)[1] == val
    with pytest.raises(DataError, match="need at least one of each"):
        split_documents(docs[:1])
