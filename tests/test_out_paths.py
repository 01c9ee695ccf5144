"""Outputs never written through a link, and any name the file system allows works, however long (issue 30)."""
from __future__ import annotations

import os

import pytest

from minimaxdd.errors import UserError
from minimaxdd.files import NAME_MAX, atomic_dir, lock_path, run_lock, write_json, write_text

LONGEST = "n" * NAME_MAX


def test_a_file_written_where_a_link_was_replaces_the_link_not_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("the user's")
    for write, name in ((write_json, "r.json"), (write_text, "r.md")):
        (tmp_path / name).symlink_to(target)
        write(tmp_path / name, {"a": 1} if write is write_json else "ours")
        assert not (tmp_path / name).is_symlink() and target.read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "target.txt"]


def test_the_longest_legal_name_works_for_files_sets_and_locks(tmp_path):
    write_json(tmp_path / LONGEST, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == [LONGEST]
    (tmp_path / LONGEST).unlink()
    out = tmp_path / LONGEST
    lock = lock_path(out)
    assert lock.parent == tmp_path and len(os.fsencode(lock.name)) <= NAME_MAX and lock.name.endswith(".lock")
    assert lock_path(tmp_path / LONGEST) == lock                   # the same for every process
    with run_lock(out):
        assert lock.exists()
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("x")
        with atomic_dir(out, overwrite=True) as tmp:            # the old one moved aside under a short name
            (tmp / "y").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == [LONGEST] and [p.name for p in out.iterdir()] == ["y"]


def test_a_lock_place_taken_by_a_link_is_refused_before_anything_is_written(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    lock_path(tmp_path / "run").symlink_to(victim)
    with pytest.raises(UserError, match=r"run\.lock is a symbolic link \(to .*victim\).*remove the link"):
        with run_lock(tmp_path / "run"):
            pytest.fail("the lock was taken")
    assert victim.read_text() == "keep" and lock_path(tmp_path / "run").is_symlink()
