"""The keys the tokenize and dedup stages share: where the input is, how it is read, and the rules.

Both stages read the same input the same way (source.py) and apply the same
per-document rules (rules.py) before their own work, so the dedup stage only
clusters documents that tokenize would keep; tokenize refuses a dedup decision
made with other rules. Keys tagged `rules` are the ones compared.
"""

from __future__ import annotations

import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Literal

from model import config as configlib
from model.config import Config, option
from pipeline.corpus.batches import SCHEMAS, Columns, Reading, Rules
from pipeline.corpus.pool import Source
from pipeline.corpus.source import FileInfo

OUTPUT = "output"  # the keys that change a stage's output bytes (compared on a rerun)
RULES = ("output", "rules")  # ... and that a dedup decision must have been made with
COLUMN_KEYS = ("text_column", "repo_column", "path_column", "language_column")


@dataclass(kw_only=True)
class SourceConfig(Config):
    # `input` is not tagged: the files themselves are compared (path, size, mtime)
    input: str = option(
        "data/raw",
        "a folder of *.parquet / *.jsonl[.gz|.zst] files, a glob or a file; with "
        "schema=files a folder of source files",
    )
    schema: Literal["github-code", "the-stack", "files"] = option(
        "github-code",
        "what the input is: parquet/JSON Lines in github-code's or The Stack's columns, "
        "or files (a folder of source files)",
        affects=RULES,
    )
    # the record's columns (keys, for JSON Lines); '' = the schema's (source.py's table)
    text_column: str = option(
        "", "the column that holds the code; '' = the schema's (code, content)", affects=RULES
    )
    repo_column: str = option(
        "",
        "the repository column (the split hashes it; absent: the file's name); '' = the schema's",
        affects=RULES,
    )
    path_column: str = option("", "the file path column; '' = the schema's", affects=RULES)
    language_column: str = option(
        "",
        "the language column (absent: the path's extension decides); '' = the schema's",
        affects=RULES,
    )
    languages: list[str] = option(
        factory=list, help="keep only these `language` values; [] = all", affects=RULES
    )
    max_doc_bytes: int = option(
        1_000_000, "longer documents are skipped and counted", affects=RULES, gt=0
    )
    max_line_chars: int = option(
        1000, "skip a document whose longest line is longer (0 = off)", affects=RULES, ge=0
    )
    max_mean_line_chars: int = option(
        100, "skip a document whose mean line length is longer (0 = off)", affects=RULES, ge=0
    )
    min_alnum_fraction: float = option(
        0.25, "skip a document with fewer letters and digits (0 = off)", affects=RULES, ge=0, le=1
    )
    drop_generated: bool = option(
        True, "skip a document with an auto-generated marker in its first 5 lines", affects=RULES
    )
    workers: int | Literal["auto"] = option(
        "auto", "worker processes; auto = the usable cores", ge=1
    )
    max_rss_gb: float = option(4.0, "stop cleanly when all processes together hold this", gt=0)
    min_available_gb: float = option(1.0, "stop cleanly when the machine has less available", ge=0)
    batch_bytes: int = option(1_000_000, "text bytes per batch sent to a worker", gt=0)
    decode_mb: float = option(
        256,
        "text of decoded row groups in shared memory at once (a larger one is read alone)",
        gt=0,
    )
    # fail stops where skip goes on: the output before is the same, so it is not tagged
    on_error: Literal["fail", "skip"] = option(
        "fail", "an unreadable input file: fail, or skip it and record it"
    )
    progress_seconds: float = option(5.0, "seconds between progress lines on stderr")

    def __post_init__(self) -> None:
        preset = SCHEMAS.get(self.schema)  # an unknown schema: the checks below name it
        if preset is not None:
            for key, value in zip(COLUMN_KEYS, astuple(preset), strict=True):
                if not getattr(self, key):
                    setattr(self, key, value)
        super().__post_init__()

    def checks(self) -> list[str]:
        set_here = [k for k in COLUMN_KEYS if getattr(self, k)]
        if self.schema == "files" and set_here:
            return [
                *super().checks(),
                f"{', '.join(set_here)}: schema=files reads whole files and has no columns; "
                "leave them out (or set schema= to read parquet or JSON Lines)",
            ]
        return super().checks()

    def reading(self) -> Reading:
        """How the workers read the input (batches.Reading)."""
        return Reading(
            schema=self.schema,
            columns=Columns(*(getattr(self, k) for k in COLUMN_KEYS)),
            languages=tuple(self.languages),
            max_doc_bytes=self.max_doc_bytes,
            root=str(Path(self.input).expanduser()) if self.schema == "files" else "",
        )

    def n_workers(self) -> int:
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.workers)

    def rules(self, digest: bool) -> Rules:
        """What a worker applies; `digest`: compute the exact-dedup hash too."""
        return Rules(
            max_doc_bytes=self.max_doc_bytes,
            max_line_chars=self.max_line_chars,
            max_mean_line_chars=self.max_mean_line_chars,
            min_alnum_fraction=self.min_alnum_fraction,
            drop_generated=self.drop_generated,
            digest=digest,
        )

    def source(self, files: list[Path], infos: list[FileInfo | str], mark: Any = None) -> Source:
        """What pool.read_in_order reads: the files, their row groups, these keys."""
        groups = [i.groups if isinstance(i, FileInfo) else i for i in infos]
        members = [i.members if isinstance(i, FileInfo) else None for i in infos]
        budget = int(self.decode_mb * 2**20)
        return Source(files, groups, self.reading(), self.batch_bytes, budget, mark, members)

    def rule_values(self) -> dict[str, Any]:
        return configlib.values(self, "rules")
