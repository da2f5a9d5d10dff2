"""pipeline/launch.py's report of a failed run, on failures as torchrun records them."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from pipeline.launch import report


def failure(rank: int, code: int) -> ProcessFailure:
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="")


def test_a_rank_stopped_after_saying_why_does_not_set_the_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 1 failed first (2); torchrun then SIGTERMed rank 0, which had printed the same
    line: nothing more is printed, and the code is 2, not 1 (seen under load)."""
    for r in (0, 1):
        (tmp_path / f"rank-{r}").write_text("codegpt train: error: bad\n")
    assert report({1: failure(1, 2), 0: failure(0, -15)}, tmp_path) == 2
    assert capsys.readouterr().err == ""


def test_a_line_rank_0_did_not_print_is_printed_with_its_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rank-0").write_text("codegpt train: error: a\n")
    (tmp_path / "rank-1").write_text("codegpt train: error: b\n")
    assert report({0: failure(0, 2), 1: failure(1, 3)}, tmp_path) == 2
    assert capsys.readouterr().err == "rank 1: codegpt train: error: b\n"


def test_a_failure_nobody_explained_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report({1: failure(1, -9)}, tmp_path) == 1
    assert capsys.readouterr().err == "codegpt launch: rank 1 (pid 1001) was killed by SIGKILL\n"
