"""Reading the chosen files and writing them as github-code parquet files, atomically."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model.atomic import write_atomically
from pipeline.sample_data.sources import Candidate

PART = "part-{:05d}.parquet"

# The schema of codeparrot/github-code, column for column.
SCHEMA = pa.schema(
    [
        ("code", pa.string()),
        ("repo_name", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("license", pa.string()),
        ("size", pa.int64()),
    ]
)


def select(cands: list[Candidate], max_bytes: int) -> tuple[list[tuple[Candidate, str]], Counter]:
    """Read candidates in key order until max_bytes of text; skip non-text files."""
    chosen: list[tuple[Candidate, str]] = []
    skipped: Counter[str] = Counter()
    total = 0
    for c in cands:
        if total + c.size > max_bytes:
            continue  # a smaller file further on may still fit
        try:
            text = c.file.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        except OSError:
            skipped["unreadable"] += 1
            continue
        if "\x00" in text:
            skipped["binary"] += 1
            continue
        chosen.append((c, text))
        total += len(text.encode("utf-8"))
        if max_bytes - total < 64:  # nothing useful fits any more
            break
    chosen.sort(key=lambda ct: (ct[0].repo_name, ct[0].path))
    return chosen, skipped


def _table(rows: list[tuple[Candidate, str]]) -> pa.Table:
    return pa.table(
        {
            "code": [t for _, t in rows],
            "repo_name": [c.repo_name for c, _ in rows],
            "path": [c.path for c, _ in rows],
            "language": [c.language for c, _ in rows],
            "license": [c.license for c, _ in rows],
            "size": [len(t.encode("utf-8")) for _, t in rows],
        },
        schema=SCHEMA,
    )


def _chunks(rows: list[tuple[Candidate, str]], target: int) -> list[list[tuple[Candidate, str]]]:
    """Split rows, in order, into runs of about `target` text bytes each."""
    out: list[list[tuple[Candidate, str]]] = [[]]
    size = 0
    for row in rows:
        if out[-1] and size >= target:
            out.append([])
            size = 0
        out[-1].append(row)
        size += len(row[1].encode("utf-8"))
    return out if out[0] else []


def write_parts(
    out_dir: Path, rows: list[tuple[Candidate, str]], file_bytes: int, row_groups_per_file: int
) -> list[dict]:
    """part-NNNNN.parquet files of ~file_bytes, each of several row groups, written atomically."""
    written = []
    group_bytes = max(1, file_bytes // row_groups_per_file)
    for i, part_rows in enumerate(_chunks(rows, file_bytes)):
        final = out_dir / PART.format(i)

        def write(f: object, part_rows: list[tuple[Candidate, str]] = part_rows) -> None:
            with pq.ParquetWriter(f, SCHEMA, compression="zstd") as writer:
                for group in _chunks(part_rows, group_bytes):
                    writer.write_table(_table(group), row_group_size=len(group))

        write_atomically(final, write)
        nbytes = sum(len(t.encode("utf-8")) for _, t in part_rows)
        written.append({"file": final.name, "rows": len(part_rows), "code_bytes": nbytes})
    return written
