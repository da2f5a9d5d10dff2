"""`python -m pipeline <stage> [--config FILE] [key=value ...]`.

The single boundary where user errors become one line on stderr and an exit
code. Stage modules are imported lazily by name (nothing imports a stage's
entry point); each has `CONFIG` (a dataclass), `DEFAULT_CONFIG` (a file under
configs/, or None) and `run(cfg) -> int`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path

from model import config as configlib
from model.errors import CodegptError

# stage -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "sample-data": (
        "pipeline.sample_data.stage",
        "write the built-in sample of real code as parquet",
    ),
    "dedup": ("pipeline.dedup.stage", "near-duplicate removal before tokenize (MinHash + LSH)"),
    "tokenize": ("pipeline.tokenize.stage", "parquet files -> GPT-2 token shards + manifest"),
    "plan": ("pipeline.plan", "GPU memory and time a training config needs"),
    "smoke": ("pipeline.smoke", "10 steps + eval + checkpoint round trip; writes smoke.ok"),
    "train": ("pipeline.train", "train (resumes from the newest good checkpoint)"),
    "sample": ("pipeline.sample", "text from a checkpoint"),
    "serve": ("pipeline.serve.stage", "OpenAI-compatible completions server over a run"),
    "eval": ("pipeline.eval", "val split per language: loss and bits per byte"),
    "humaneval": ("pipeline.humaneval.stage", "HumanEval pass@k, the programs run in a sandbox"),
    "export": ("pipeline.export", "write a Hugging Face GPT2LMHeadModel folder"),
    "plot": ("pipeline.plot", "loss curve PNG of a run"),
    "report": ("pipeline.report", "text summary of a run"),
}

REPO_ROOT = Path(__file__).resolve().parent.parent
# Under pipeline/launch.py: the folder where each rank leaves its one-line error
RANK_ERRORS_ENV = "CODEGPT_RANK_ERRORS"


def _resolve_default(rel: str) -> Path:
    """configs/x.yaml relative to the working directory, else to the repository."""
    p = Path(rel)
    return p if p.exists() else REPO_ROOT / rel


def _setup_logging() -> None:
    level = os.environ.get("CODEGPT_LOG", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="codegpt stages",
        epilog="stages:\n"
        + "\n".join(f"  {name:<12} {help_}" for name, (_, help_) in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=sorted(STAGES), metavar="stage")
    parser.add_argument("--config", help="YAML config file (default: the stage's own)")
    parser.add_argument("--keys", action="store_true", help="list the stage's config keys")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    # intermixed: `stage --config FILE key=value` (the Makefile's form) must reach the
    # overrides; plain parse_args ends the `*` positional before --config and refuses them
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    module = importlib.import_module(STAGES[args.stage][0])
    if args.keys:
        print(configlib.describe(module.CONFIG))
        return 0
    try:
        path = args.config
        if path is None and module.DEFAULT_CONFIG is not None:
            path = _resolve_default(module.DEFAULT_CONFIG)
        cfg = configlib.load(module.CONFIG, path, args.overrides)
        return int(module.run(cfg) or 0)
    except CodegptError as e:
        _say_once(f"codegpt {args.stage}: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        print(f"codegpt {args.stage}: interrupted", file=sys.stderr)
        return 130


def _say_once(line: str) -> None:
    """Our one-line error on stderr; under pipeline/launch.py only rank 0 prints it (an
    error every rank meets is said once) and each rank leaves it in the launcher's folder."""
    folder, rank = os.environ.get(RANK_ERRORS_ENV), os.environ.get("RANK")
    if folder and rank is not None:
        with contextlib.suppress(OSError):
            Path(folder, f"rank-{rank}").write_text(line + "\n")
        if rank != "0":
            return
    print(line, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
