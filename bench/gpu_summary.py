"""The summary of one part of bench/gpu_session.sh: how each step ended, and its goals.

Reads what the session's steps left in its scratch folder (steps.tsv, the
pytest junit file, the benches' --json figures) and prints, and writes as
markdown, one line a figure against its goal:

- the planner against the measured peak (bench/memory_gpu.py part A): within 10 %;
- tokens/s of codegpt's step against nanoGPT's recipe in the same run
  (bench/train_gpu.py): >= 1.3x; its MFU >= 50 % on an H200;
- KV-cache sampling speed (bench/sample_gpu.py), against the re-run context.

Also writes every figure, merged, as one JSON file. Exit status 1 when a step
failed or timed out, else 0.

    python3 bench/gpu_summary.py SCRATCH --part 1 --out "$OUT/summary.md" --figures "$OUT/figures.json"
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.atomic import write_text  # noqa: E402

PLANNER_GOAL = 0.10  # |predicted / measured - 1| of every peak
SPEED_GOAL = 1.3  # codegpt's step / nanoGPT's recipe, tokens/s
MFU_GOAL = 0.50  # on an H200


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def steps(scratch: Path) -> list[tuple[str, str, int, int]]:
    """(name, how it ended, seconds, limit) per step, in the order they ran."""
    try:
        text = (scratch / "steps.tsv").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        name, how, took, limit = line.split("\t")
        out.append((name, how, int(took), int(limit)))
    return out


def tests(scratch: Path) -> dict[str, int] | None:
    """Counts of pytest's junit file: tests, failures, errors, skipped."""
    try:
        root = ET.parse(scratch / "tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _mark(ok: bool) -> str:
    return "meets the goal" if ok else "MISSES the goal"


def planner_lines(name: str, fig: dict[str, Any] | None) -> list[str]:
    if fig is None:
        return [f"- planner vs measured peak ({name}): no figures (the step did not finish)"]
    rows = fig.get("part_a", [])
    if not rows:
        return [f"- planner vs measured peak ({name}): no size ran"]
    worst = max(rows, key=lambda r: max(abs(r["train_error"]), abs(r["eval_error"])))
    err = max(abs(worst["train_error"]), abs(worst["eval_error"]))
    sizes = ",".join(str(r["micro_batch"]) for r in rows)
    return [
        f"- planner vs measured peak ({name}, micro-batch {sizes}): worst "
        f"{100 * err:.1f} % at micro-batch {worst['micro_batch']} (goal within "
        f"{100 * PLANNER_GOAL:.0f} %): {_mark(err <= PLANNER_GOAL)}"
    ]


def train_lines(fig: dict[str, Any] | None) -> list[str]:
    if fig is None:
        return ["- training race: no figures (the step did not finish)"]
    loops = fig.get("loops", {})
    out = [f"- training race on {fig.get('device')}, micro-batch {fig.get('micro_batch')}:"]
    for key, row in loops.items():
        if row.get("oom"):
            out.append(f"  - {key}: out of memory")
            continue
        mfu = row.get("mfu")
        mfu_text = f", MFU {100 * mfu:.1f} %" if mfu is not None else ""
        peak = row.get("peak_gb")
        peak_text = f", peak {peak:.2f} GiB" if peak is not None else ""
        out.append(f"  - {key}: {row['tokens_per_s']:,.0f} tokens/s{mfu_text}{peak_text}")
    for key, label in (("fused", "fused loss, AdamW"), ("muon", "fused loss, Muon")):
        ratio = fig.get(f"{key}_vs_plain")
        if ratio is not None:
            out.append(
                f"- codegpt ({label}) / nanoGPT's recipe, tokens/s: {ratio:.2f}x "
                f"(goal >= {SPEED_GOAL}x): {_mark(ratio >= SPEED_GOAL)}"
            )
    fused = loops.get("fused", {})
    if fused.get("mfu") is not None and "H200" in str(fig.get("device")):
        ok = fused["mfu"] >= MFU_GOAL
        out.append(f"- MFU of codegpt's step on an H200 (goal >= 50 %): {_mark(ok)}")
    return out


def summarize(scratch: Path, part: str) -> tuple[list[str], dict[str, Any], bool]:
    """(markdown lines, every figure, whether every step ended well)."""
    ran = steps(scratch)
    figures: dict[str, Any] = {"part": part, "steps": [list(s) for s in ran]}
    lines = [f"# GPU session, part {part}", "", "| step | ended | seconds | limit |"]
    lines.append("| --- | --- | ---: | ---: |")
    lines += [f"| {n} | {how} | {took} | {limit} |" for n, how, took, limit in ran]
    lines += ["", "Against the goals:", ""]
    t = tests(scratch)
    if t is not None:
        figures["tests"] = t
        passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
        lines.append(
            f"- GPU tests: {passed} passed, {t['failures'] + t['errors']} failed, "
            f"{t['skipped']} skipped"
        )
    for key in ("memory", "memory-compile"):
        if any(n == key for n, *_ in ran):
            fig = _read(scratch / f"{key}.json")
            figures[key] = fig
            name = "compile off" if key == "memory" else "compile on"
            lines += planner_lines(name, fig)
    if any(n == "sample" for n, *_ in ran):
        s = _read(scratch / "sample.json")
        figures["sample"] = s
        if s is None:
            lines.append("- KV-cache sampling: no figures (the step did not finish)")
        else:
            lines.append(
                f"- KV-cache sampling, batch 1: {s['cache_tokens_per_s']:,.0f} tokens/s, "
                f"{s['speedup']:.1f}x the re-run context ({s['no_cache_tokens_per_s']:,.0f})"
            )
    if any(n == "train" for n, *_ in ran):
        fig = _read(scratch / "train.json")
        figures["train"] = fig
        lines += train_lines(fig)
    if any(n == "serve" for n, *_ in ran):
        lines.append("- the server: its table is serve.md")
    ok = bool(ran) and all(how == "ok" for _, how, *_ in ran)
    return lines, figures, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("scratch", type=Path, help="the session's scratch folder")
    ap.add_argument("--part", required=True)
    ap.add_argument("--out", type=Path, required=True, help="summary.md")
    ap.add_argument("--figures", type=Path, required=True, help="figures.json")
    args = ap.parse_args(argv)
    lines, figures, ok = summarize(args.scratch, args.part)
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)
    write_text(args.figures, json.dumps(figures, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
