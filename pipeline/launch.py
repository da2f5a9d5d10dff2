"""`python -m pipeline.launch [torchrun's arguments]`: torchrun, whose failures end in one line.

`make train NPROC=N` starts its processes through this rather than through `torchrun`:
the same launcher (torch.distributed.run's own `run`), but when a worker fails

- a codegpt error that every rank meets (a config or data problem) is printed once, by
  rank 0 (pipeline/__main__.py: every rank also leaves its line in the folder named by
  CODEGPT_RANK_ERRORS, and a line that differs from rank 0's is printed here, with its
  rank); the exit status is the worker's own (2 for a config error), not torchrun's 1;
- torchrun's failure report (a block of some 30 lines for each rank) is not printed;
  when no rank said why itself (a traceback or a signal: the worker's own output is
  above), one line names the rank that failed first and how.

Its workers die with it (model/distributed.py's die_with_launcher), as torchrun's do.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from pipeline.__main__ import RANK_ERRORS_ENV


def main(argv: list[str] | None = None) -> int:
    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    # the agent's own report of a failed worker: replaced by ours
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="codegpt-ranks-") as folder:
        os.environ[RANK_ERRORS_ENV] = folder  # the workers inherit the environment
        try:
            torchrun.run(args)
        except ChildFailedError as e:
            return report(e.failures, Path(folder))
    return 0


def report(failures: dict[int, ProcessFailure], folder: Path) -> int:
    """What the ranks said that rank 0 did not, or how the first failure ended; its code."""
    said = {int(p.stem.removeprefix("rank-")): p.read_text().strip() for p in folder.glob("rank-*")}
    for rank, line in sorted(said.items()):
        if rank != 0 and line != said.get(0):
            print(f"rank {rank}: {line}", file=sys.stderr)
    # The lowest rank that said why and exited by itself, else the first to fail. (Once one
    # rank fails the launcher stops the others with SIGTERM: a rank may be stopped after
    # saying why, before its own exit, and so be recorded as killed.)
    speaking = sorted(r for r in failures if r in said)
    own = [r for r in speaking if failures[r].exitcode > 0]
    rank = (own or speaking or [min(failures, key=lambda r: (failures[r].timestamp, r))])[0]
    first = failures[rank]
    if not said:
        how = (
            f"was killed by {first.signal_name()}"
            if first.exitcode < 0
            else f"exited with code {first.exitcode}"
        )
        print(f"codegpt launch: rank {rank} (pid {first.pid}) {how}", file=sys.stderr)
    return first.exitcode if first.exitcode > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
