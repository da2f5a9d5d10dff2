"""tests/conftest.py's `shared`: a folder is built once however often it is asked for, and a
test that changes one is named at the end of the session."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Shared


def test_a_shared_folder_is_built_once_and_a_change_to_it_is_named(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "a.txt").write_text("a")

    first, second = Shared(tmp_path / "s"), Shared(tmp_path / "s")  # two workers
    assert first.get("x", build) == second.get("x", build) and len(calls) == 1
    assert first.changed() == [] and second.changed() == []
    (calls[0] / "a.txt").write_text("changed")  # a test that did not copy it first
    assert first.changed() == [str(calls[0])]
    (calls[0] / "a.txt").write_text("a")
    (calls[0] / "new.txt").write_text("")  # an added file is a change too
    assert second.changed() == [str(calls[0])]
