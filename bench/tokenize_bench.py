"""`make bench-tokenize`: how fast, and in how much memory, parquet becomes token shards.

In one run, on the built-in sample of real code (`pipeline sample-data`, 250 MB
of text by default, built once under data/bench/ and reused):

  (a) tiktoken alone: GPT-2 `encode_ordinary` over texts already in memory, one
      process, one core. The ceiling a single core can reach.
  (b) baseline: what a careful single-process script does: stream parquet
      batches of the `code` column, encode, fill a preallocated uint16 buffer,
      write a .npy shard when it is full.
  (c) the stage with every rule off (dedup=none, no filters, no near-dedup):
      `python -m pipeline tokenize workers=auto shard_tokens=1e8`, on the 1x
      input and on a 4x input (the same files listed four times through
      symlinks), to show that its memory does not grow with the input.
  (d) the stage with exact dedup and the quality filters on (their defaults),
      1x and 4x: what they cost in throughput and memory, and what they remove
      (at 4x the three later copies of every file are exact duplicates).
  (e) the near-dedup stage (`python -m pipeline dedup`, MinHash + LSH), 1x and
      4x, in MB/s of text against (c)'s.
  (f) the stage, rules off, on the 1x sample rewritten as one file of a single
      row group (250 MB of text decoded at once), at 1x, 2x and 4x: memory
      with the largest row group this input can have.

Each part runs as its own subprocess; a sampling thread here sums the resident
memory (RSS) of that process and all its children every 200 ms (the stage's
own watchdog interval) and keeps the peak. One sample of five processes costs
~5 ms of CPU, so sampling every 20 ms took a quarter of a core from the
measured run on a 2-core box; memory here moves in steps of whole buffers, which
200 ms still catches. RSS counts pages shared between a parent and its forked workers once per
process, so the sum is an upper bound of what the tree really holds. Shared-memory pages
(the decoded row groups in /dev/shm) are taken out of each process's RSS and counted once,
as what /dev/shm holds beyond its level at the start: a segment no process maps is RAM
too.

Token counts include one end-of-text token per document in every part,
so (b) and (c) must agree exactly; the script says so when they do not.

    python bench/tokenize_bench.py [--bytes 250000000] [--out docs/benchmarks/tokenize.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from bench.common import machine, measure, version  # noqa: E402
from model import tokenizer  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.manifest import read_manifest  # noqa: E402

SHARD_TOKENS = 100_000_000
BATCH_ROWS = 1024  # the baseline's batch; sample rows are at most 1 MB, so <= ~1 GB worst case


# ---------------------------------------------------------------- children


def part_a(files: list[str]) -> dict[str, Any]:
    """Encode rate of the tokenizer alone: texts in memory, one process."""
    texts: list[str] = []
    for f in files:
        texts.extend(pq.read_table(f, columns=["code"]).column("code").to_pylist())
    enc = tokenizer.get().encoding
    enc.encode_ordinary("warm up")
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    t0 = time.perf_counter()
    ntok = 0
    for t in texts:
        ntok += len(enc.encode_ordinary(t)) + 1  # + EOT, as the shards hold it
    secs = time.perf_counter() - t0
    return {"tokens": ntok, "bytes": nbytes, "docs": len(texts), "seconds": secs}


def part_b(files: list[str], out_dir: str) -> dict[str, Any]:
    """The single-process streaming baseline with a preallocated uint16 buffer."""
    enc = tokenizer.get().encoding
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = np.empty(SHARD_TOKENS, dtype=np.uint16)
    fill = shard = ntok = nbytes = ndocs = 0
    t0 = time.perf_counter()

    def flush(n: int) -> None:
        nonlocal shard
        tmp = out / f"train_{shard:06d}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, buf[:n])
        os.replace(tmp, out / f"train_{shard:06d}.npy")
        shard += 1

    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=["code"]):
            for text in batch.column(0).to_pylist():
                ids = enc.encode_ordinary(text)
                ids.append(tokenizer.EOT)
                nbytes += len(text.encode("utf-8"))
                ndocs += 1
                ntok += len(ids)
                pos = 0
                while pos < len(ids):  # a document may straddle two shards
                    take = min(len(ids) - pos, SHARD_TOKENS - fill)
                    buf[fill : fill + take] = ids[pos : pos + take]
                    fill += take
                    pos += take
                    if fill == SHARD_TOKENS:
                        flush(fill)
                        fill = 0
    if fill:
        flush(fill)
    secs = time.perf_counter() - t0
    return {"tokens": ntok, "bytes": nbytes, "docs": ndocs, "seconds": secs}


# ---------------------------------------------------------------- measuring


def ensure_inputs(bench: Path, nbytes: int) -> tuple[Path, Path, int]:
    """The 1x sample (built once by the sample-data stage) and a 4x folder of symlinks."""
    one = bench / "sample-1x"
    subprocess.run(
        [sys.executable, "-m", "pipeline", "sample-data", f"output={one}", f"max_bytes={nbytes}"],
        cwd=REPO,
        check=True,
    )
    stamp = json.loads((one / "sample-data.json").read_text())
    four = bench / "sample-4x"
    shutil.rmtree(four, ignore_errors=True)
    four.mkdir(parents=True)
    for k in range(4):
        for f in sorted(one.glob("part-*.parquet")):
            (four / f"copy{k}-{f.name}").symlink_to(f.resolve())
    return one, four, int(stamp["code_bytes"])


def single_group_inputs(bench: Path, one: Path) -> tuple[Path, Path, Path]:
    """The 1x sample rewritten as one file of a single row group (the worst case for
    memory: the whole row group's text is decoded at once), and 2x and 4x folders of it.

    Flatness is 4x against 2x here: the 1x run decodes its only row group before the
    shard buffer is first filled, so it never meets the ceiling (buffer full while a row
    group decodes); 2x is the smallest input that does."""
    single = bench / "single-1x"
    target = single / "all.parquet"
    if not target.is_file():
        single.mkdir(parents=True, exist_ok=True)
        table = pa.concat_tables(pq.read_table(f) for f in sorted(one.glob("part-*.parquet")))
        tmp = target.with_name(target.name + ".tmp")
        pq.write_table(table, tmp, row_group_size=table.num_rows, compression="zstd")
        os.replace(tmp, target)
    copies = []
    for n in (2, 4):
        folder = bench / f"single-{n}x"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for k in range(n):
            (folder / f"copy{k}.parquet").symlink_to(target.resolve())
        copies.append(folder)
    return single, copies[0], copies[1]


def shard_tokens(folder: Path) -> int:
    return sum(int(np.load(p, mmap_mode="r").shape[0]) for p in folder.glob("*.npy"))


RULES_OFF = [
    "dedup=none",
    "near_dedup=",
    "max_line_chars=0",
    "max_mean_line_chars=0",
    "min_alnum_fraction=0",
    "drop_generated=false",
]
RULES_ON = ["dedup=exact", "near_dedup="]  # the filters at their defaults


def run_stage(src: Path, out: Path, rules: list[str]) -> dict[str, Any]:
    """(c), (d): the real stage as a user runs it; its manifest must agree with its shards."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "tokenize", f"input={src}", f"output={out}"]
    # The memory limits stay at the stage's defaults (4 GB, 1 GB available):
    # a trip would end the benchmark with exit 3, which is itself a finding.
    cmd += ["workers=auto", f"shard_tokens={SHARD_TOKENS}", "force=true", *rules]
    m = measure(cmd)
    man = read_manifest(out)
    tokens = shard_tokens(out)
    if man is None or not man.complete or man.total_tokens() != tokens:
        raise SystemExit(f"bench: {out}: manifest disagrees with the shards ({man})")
    counts = man.counts
    return {
        "tokens": tokens,
        "seconds": m.wall,
        "peak": m.peak,
        "pss": m.peak_pss,
        "procs": m.procs,
        "docs": counts.read,
        "removed": sum(counts.skipped.values()) / max(counts.read, 1),
        "main_cpu": m.main_cpu,
        "worker_cpu": m.other_cpu,
    }


def run_dedup(src: Path, out: Path) -> dict[str, Any]:
    """(e): the near-dedup stage; no tokens, so its rate is MB/s of text."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "dedup", f"input={src}", f"output={out}"]
    m = measure([*cmd, "workers=auto", "force=true"])
    counts = json.loads((out / "dedup.json").read_text())["counts"]
    return {
        "tokens": 0,
        "seconds": m.wall,
        "peak": m.peak,
        "pss": m.peak_pss,
        "procs": m.procs,
        "main_cpu": m.main_cpu,
        "worker_cpu": m.other_cpu,
        "docs": counts["read"],
        "removed": counts["dropped"] / max(counts["read"], 1),
    }


def run_child(part: str, src: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", part, "--input", str(src), "--scratch", str(out)]
    m = measure(cmd)
    res = json.loads(m.stdout.strip().splitlines()[-1])
    res.update(peak=m.peak, pss=m.peak_pss, procs=m.procs, wall=m.wall)
    return res


# ---------------------------------------------------------------- reporting


def row(name: str, procs: str, r: dict[str, Any], nbytes: int) -> str:
    s = r["seconds"]
    tok = f"{r['tokens'] / 1e6:.1f} M" if r["tokens"] else "-"
    rate = f"{r['tokens'] / s / 1e6:.2f}" if r["tokens"] else "-"
    removed = f"{100 * r['removed']:.1f} %" if "removed" in r else "-"
    cpu = f"{r['main_cpu']:.1f} / {r['worker_cpu']:.1f} s" if "main_cpu" in r else "-"
    return (
        f"| {name} | {procs} | {tok} | {s:.1f} | {rate} | {nbytes / s / 1e6:.1f} | "
        f"{r['peak'] / 2**20:,.0f} / {r['pss'] / 2**20:,.0f} MiB | {removed} | {cpu} |"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _header(res: dict[str, dict[str, Any]], nbytes: int, cmd: str) -> list[str]:
    load = os.getloadavg()
    docs = next((r["docs"] for r in res.values() if "docs" in r), None)
    return [
        "# Tokenize benchmark",
        "",
        f"- date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {machine()}",
        f"- load average (1, 5, 15 min) after the run: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}",
        f"- python {platform.python_version()}, tiktoken {version('tiktoken')}, "
        f"pyarrow {version('pyarrow')}",
        f"- input: the built-in sample (`pipeline sample-data`), {nbytes / 1e6:.0f} MB of "
        f"code{f', {docs:,} documents' if docs else ''}; 4x = the same files listed four times",
        f"- command: `{cmd}`",
    ]


def _memory_ratios(res: dict[str, dict[str, Any]], part: str, small: str = "1") -> list[str]:
    """< 1 GB held (PSS; the RSS upper bound beside it), and flat from `small`x to 4x."""
    runs = [res[part + k] for k in ("1", "2", "4") if part + k in res]
    pss, rss = max(r["pss"] for r in runs), max(r["peak"] for r in runs)
    one, four = res[part + small], res[part + "4"]
    flat = four["pss"] / one["pss"]
    return [
        f"| peak memory ({part}), {', '.join(k + 'x' for k in ('1', '2', '4') if part + k in res)}"
        f" | {pss / 1e9:.2f} GB (RSS sum {rss / 1e9:.2f}) | < 1 GB | {verdict(pss < 1e9)} |",
        f"| peak memory ({part}) 4x / {small}x | {flat:.2f} | within 10 % | "
        f"{verdict(abs(flat - 1) <= 0.1)} |",
    ]


def _ratios(res: dict[str, dict[str, Any]], cores: int) -> list[str]:
    rate = {k: v["tokens"] / v["seconds"] for k, v in res.items()}
    out = ["", "| ratio | measured | target | |", "| --- | --- | --- | --- |"]
    if "a" in rate:
        ca = rate["c1"] / rate["a"]
        out.append(
            f"| (c)/(a) | {ca:.2f}x | >= 0.9 x {cores} cores = {0.9 * cores:.1f}x | "
            f"{verdict(ca >= 0.9 * cores)} |"
        )
    if "b" in rate:
        target = f"about {0.9 * cores * rate['a'] / rate['b']:.1f}x" if "a" in rate else ""
        out.append(f"| (c)/(b) | {rate['c1'] / rate['b']:.2f}x | {target} | |")
    out += _memory_ratios(res, "c")
    c1 = res["c1"]
    if c1.get("worker_cpu"):
        share = c1["main_cpu"] / c1["worker_cpu"]
        out.append(
            f"| (c) main-process CPU / workers' CPU, 1x | 1/{1 / share:.1f} "
            f"({c1['main_cpu']:.2f} / {c1['worker_cpu']:.1f} s) | <= 1/16 | "
            f"{verdict(share <= 1 / 16)} |"
        )
    c4 = res.get("c4", {})
    if c1.get("worker_cpu") and c4.get("worker_cpu", 0) > c1["worker_cpu"]:
        # What a longer run costs per extra input, without the fixed start-up (imports,
        # schema checks, the pool, the first touch of the shard buffer).
        main, work = c4["main_cpu"] - c1["main_cpu"], c4["worker_cpu"] - c1["worker_cpu"]
        out.append(
            f"| ... the same per extra input, (4x - 1x) | 1/{work / max(main, 1e-9):.1f} "
            f"({main:.2f} / {work:.1f} s) | <= 1/16 | {verdict(main <= work / 16)} |"
        )
    if "d1" in res:  # the rules' cost: documents read per second, 1x
        dc = res["c1"]["seconds"] / res["d1"]["seconds"]
        out.append(
            f"| (d)/(c) throughput (text read per second) | {dc:.2f}x | >= 0.90x | "
            f"{verdict(dc >= 0.9)} |"
        )
        out += _memory_ratios(res, "d")
    if "f2" in res and "f4" in res:
        out += _memory_ratios(res, "f", small="2")
    if "e1" in res:
        ec = res["c1"]["seconds"] / res["e1"]["seconds"]  # same text bytes: MB/s ratio
        out.append(f"| (e)/(c) MB/s, 1x | {ec:.2f}x | >= 1.0x | {verdict(ec >= 1.0)} |")
        out += _memory_ratios(res, "e")
    return out


NAMES = {
    "a": ("(a) tiktoken alone, texts in memory", 1),
    "b": ("(b) baseline: stream + uint16 buffer", 1),
    "c1": ("(c) stage, every rule off, 1x input", 1),
    "c4": ("(c) stage, every rule off, 4x input", 4),
    "d1": ("(d) stage, exact dedup + filters, 1x", 1),
    "d4": ("(d) stage, exact dedup + filters, 4x", 4),
    "e1": ("(e) dedup stage (MinHash + LSH), 1x", 1),
    "e4": ("(e) dedup stage (MinHash + LSH), 4x", 4),
    "f1": ("(f) stage, rules off, one file of one row group, 1x", 1),
    "f2": ("(f) stage, rules off, that file twice, 2x", 2),
    "f4": ("(f) stage, rules off, that file four times, 4x", 4),
}


def report(res: dict[str, dict[str, Any]], nbytes: int, cores: int, cmd: str) -> str:
    lines = _header(res, nbytes, cmd)
    lines += [
        "",
        "| what | processes | tokens | seconds | M tokens/s | MB/s | peak memory, RSS / PSS "
        "| documents removed | CPU: main / workers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in res.items():
        name, times = NAMES[key]
        lines.append(row(name, str(r["procs"]), r, times * nbytes))
    if "c1" in res and "c4" in res:
        lines += _ratios(res, cores)
    lines += [
        "",
        "(a) times only the encode loop; (b) to (e) are wall time of the whole process "
        "(start-up, reading, the work, writing). Peak RSS is summed over the process and "
        "its children, sampled every 200 ms; shared pages of forked workers count once per "
        "process; the shared-memory segments (/dev/shm) count once, mapped or not. Processes: how many were alive at the peak. Removed: the share of the "
        "documents read that the rules skipped, or (e) that near-dedup drops.",
    ]
    per_1x = {k: res[k]["tokens"] / (4 if k == "c4" else 1) for k in ("b", "c1", "c4") if k in res}
    if len(set(per_1x.values())) > 1:
        lines.append(f"\nToken counts per 1x input differ: {per_1x} (skipped documents?).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bytes", type=int, default=250_000_000, help="code bytes in the 1x sample")
    ap.add_argument("--bench-dir", default="data/bench", help="inputs and scratch outputs")
    ap.add_argument("--out", default="docs/benchmarks/tokenize.md", help="markdown report")
    ap.add_argument("--parts", default="a,b,c,d,e,f", help="which parts to run (default all)")
    ap.add_argument("--child", choices=["a", "b"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        files = sorted(str(p) for p in Path(args.input).glob("*.parquet"))
        fn = part_a(files) if args.child == "a" else part_b(files, args.scratch)
        print(json.dumps(fn))
        return 0
    bench = (REPO / args.bench_dir).resolve()
    one, four, nbytes = ensure_inputs(bench, args.bytes)
    wanted = set(args.parts.split(","))
    # one file of one row group, 1x, 2x, 4x: written (~250 MB) only when part f runs
    single, single2, single4 = single_group_inputs(bench, one) if "f" in wanted else [one] * 3
    cores = len(os.sched_getaffinity(0))
    res: dict[str, dict[str, Any]] = {}
    steps = [
        ("a", lambda: run_child("a", one, bench / "out-a")),
        ("b", lambda: run_child("b", one, bench / "out-b")),
        ("c1", lambda: run_stage(one, bench / "out-c1", RULES_OFF)),
        ("c4", lambda: run_stage(four, bench / "out-c4", RULES_OFF)),
        ("d1", lambda: run_stage(one, bench / "out-d1", RULES_ON)),
        ("d4", lambda: run_stage(four, bench / "out-d4", RULES_ON)),
        ("e1", lambda: run_dedup(one, bench / "out-e1")),
        ("e4", lambda: run_dedup(four, bench / "out-e4")),
        ("f1", lambda: run_stage(single, bench / "out-f1", RULES_OFF)),
        ("f2", lambda: run_stage(single2, bench / "out-f2", RULES_OFF)),
        ("f4", lambda: run_stage(single4, bench / "out-f4", RULES_OFF)),
    ]
    for key, step in steps:
        if key[0] not in wanted:
            continue
        print(f"bench: running ({key}) ...", file=sys.stderr, flush=True)
        res[key] = step()
        r = res[key]
        print(
            f"bench: ({key}) {r['tokens'] / 1e6:.1f} M tokens in {r['seconds']:.1f}s, "
            f"peak {r['peak'] / 2**20:,.0f} MiB, removed {100 * r.get('removed', 0):.1f} %",
            file=sys.stderr,
            flush=True,
        )
    for out in bench.glob("out-*"):
        shutil.rmtree(out, ignore_errors=True)  # ~0.1-0.5 GB of shards each
    shown = argv if argv is not None else sys.argv[1:]
    cmd = " ".join(["python bench/tokenize_bench.py", *shown])
    text = report(res, nbytes, cores, cmd)
    print(text)
    if wanted != {"a", "b", "c", "d", "e", "f"}:
        return 0  # a partial run does not replace the recorded results
    write_text(REPO / args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
