"""Atomic outputs: an interrupt at any point, even while the temporary files are being created,
leaves neither a partial output nor a temporary file behind."""

from __future__ import annotations

import pytest

from servegen_ml.core import atomic


@pytest.mark.parametrize("fail_at_call", [1, 2])
def test_an_interrupt_while_the_temporaries_are_created_leaves_none(monkeypatch, tmp_path, fail_at_call):
    # SIGTERM arrives as an exception raised between two bytecodes; here it is raised right after
    # a temporary file was created (the output's, or its sidecar's), before the creator returned.
    created = []
    create_file = atomic._create_file

    def create_then_interrupt(tmp):
        create_file(tmp)
        created.append(tmp)
        if len(created) == fail_at_call:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_create_file", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_paths(tmp_path / "w.jsonl", tmp_path / "w.jsonl.meta.json"):
            pytest.fail("not reached")
    assert list(tmp_path.iterdir()) == []


def test_outputs_replace_their_targets_with_a_plain_files_mode(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with atomic.atomic_paths(tmp_path / "a.txt", tmp_path / "b.json") as (a, b):
        a.write_text("new")
        b.write_text("{}")
    assert (tmp_path / "a.txt").read_text() == "new" and (tmp_path / "b.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]
    mode = (tmp_path / "a.txt").stat().st_mode & 0o777
    assert mode == 0o666 & ~atomic.current_umask()
    atomic.write_text(tmp_path / "c.txt", "x")
    with atomic.atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    assert (tmp_path / "c.txt").read_text() == "x" and (tmp_path / "d" / "f").read_text() == "y"
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~atomic.current_umask()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
