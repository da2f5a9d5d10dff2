"""bench/serve_gpu.py's CPU dry run (a tiny model): the whole measurement runs, server
process, streaming clients and the sample baseline, and writes its table. The GPU
session's dry run (part 2, made once per test session) runs it with these arguments
(`--tiny --clients 2 --requests 1 --tokens 8 --repeats 2`) and returns it as serve.md."""

from __future__ import annotations

import pytest

from tests.bench_fixtures import dry_run
from tests.conftest import Shared


@pytest.mark.slow
def test_the_gpu_serving_bench_dry_runs_on_the_cpu(shared: Shared) -> None:
    folder = dry_run(shared, "2")
    assert (folder / "rc").read_text().startswith("0\n"), (folder / "rc").read_text()
    text = (folder / "out" / "serve.md").read_text()
    rows = [
        ln.split("|")[1:3]
        for ln in text.splitlines()
        if ln.startswith("| 1 |") or ln.startswith("| 2 |")
    ]
    assert [[c.strip() for c in r] for r in rows] == [
        ["1", "1"],
        ["1", "2"],
        ["2", "1"],
        ["2", "2"],
    ]
    assert "2 clients against 1" in text and "against `make sample`" in text
