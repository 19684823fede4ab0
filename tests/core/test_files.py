"""Atomic writes: the target is either the old result or the whole new one, never a half-written one."""

import pytest

from papernotes.core.files import atomic_write_dir, atomic_write_file, write_text_atomic


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_dir_keeps_the_old_folder_on_failure(tmp_path, durable):
    target = tmp_path / "out"
    with atomic_write_dir(target, durable) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_write_dir(target, durable) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    with atomic_write_dir(target, durable) as tmp:
        (tmp / "b.txt").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_file_keeps_the_suffix_and_the_old_file_on_failure(tmp_path, durable):
    target = tmp_path / "figure.png"
    write_text_atomic(target, "old", durable)
    with pytest.raises(RuntimeError), atomic_write_file(target, durable) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path  # writers pick the format from the suffix
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
