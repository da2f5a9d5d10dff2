"""`make bench-tokenizer`: what Codex's tokenizer (p50k) buys over GPT-2's (gpt2) on code.

In one run, on two corpora, the same documents encoded both ways:

  demo    the built-in sample `make demo` trains on (`pipeline sample-data`: this
          Python's standard library first, then its site-packages), 8 MB;
  second  real code the demo never reads: installed packages' Python
          (transformers' model folders) and C++ headers (torch's c10), one folder
          level = one repository, read with `schema=files`.

  (a) bytes per token per language, and in all, from each tokenize's manifest;
  (b) tokenize speed (M bytes of text a second, the stage as a subprocess, same
      workers) and tiktoken alone on one core;
  (c) configs/demo.yaml trained `--steps` steps on each shard folder (the same seed,
      shape and schedule; fim_rate 0 and 0.5 on the demo, 0.5 on the second), then
      `make eval`'s val bits per byte: bits per byte is comparable across tokenizers
      (the same val documents, the same bytes), loss per token is not. Wall time of
      each run.

The eval's byte counts of the two tokenizers must agree (the same val bytes): the
script stops if they do not. Everything it makes lives under --work (reused: a corpus
already there is not made again; shards are tokenized and runs trained afresh).

    python bench/tokenizer_bench.py [--steps 300] [--out docs/benchmarks/tokenizer.md]
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
import sysconfig
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import tokenizer  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.manifest import read_manifest  # noqa: E402

NAMES = ("gpt2", "p50k")
ENV = {**os.environ, "CODEGPT_SKIP_SMOKE_CHECK": "1", "CODEGPT_LOG": "WARNING"}
SECOND_BYTES = 12_000_000  # about the demo's size, split between Python and C++


def pipeline(*args: str) -> float:
    """`python -m pipeline ARGS` in the checkout; its wall seconds (it must succeed)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=ENV)
    if r.returncode:
        raise SystemExit(f"tokenizer_bench: `pipeline {' '.join(args)}` exited {r.returncode}")
    return time.perf_counter() - t0


def second_corpus(dest: Path) -> Path:
    """Copies of transformers' model folders (Python) and torch's c10 headers (C++), each
    top folder a repository, up to SECOND_BYTES; made once."""
    if (dest / ".done").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    site = Path(sysconfig.get_paths()["purelib"])
    picks = [
        (site / "transformers" / "models", "*.py"),
        (site / "torch" / "include" / "c10", "*.h"),
    ]
    for root, pattern in picks:
        budget = SECOND_BYTES // 2
        for repo in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"):
            for f in sorted(repo.rglob(pattern)):
                if budget <= 0:
                    break
                out = dest / f"{root.name}-{repo.name}" / f.relative_to(repo)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out)
                budget -= f.stat().st_size
    (dest / ".done").write_text("")
    return dest


def tokenize(src: Path, schema: str, out: Path, name: str) -> float:
    """Shards of `src` with tokenizer `name`, made afresh (it is timed); the wall seconds."""
    return pipeline(
        "tokenize",
        f"input={src}",
        f"schema={schema}",
        f"tokenizer={name}",
        f"output={out}",
        "near_dedup=",
        "val_fraction=0.1",
        "shard_tokens=1000000",
        "workers=2",
        "progress_seconds=0",
        "force=true",
    )


def per_language(folder: Path) -> dict[str, tuple[int, int]]:
    """language -> (bytes, tokens), train and val, from the manifest; 'all' too."""
    m = read_manifest(folder)
    assert m is not None
    out: dict[str, list[int]] = {}
    for split in m.counts.languages.values():
        for lang, d in split.items():
            for key in (lang, "all"):
                acc = out.setdefault(key, [0, 0])
                acc[0] += d["bytes"]
                acc[1] += d["tokens"]
    return {k: (b, t) for k, (b, t) in out.items()}


def tiktoken_rate(texts: list[str], name: str) -> float:
    """M bytes/s of tiktoken's encode_ordinary alone, this process, one thread."""
    enc, n = tokenizer.get(name).encoding, sum(len(t.encode()) for t in texts)
    t0 = time.perf_counter()
    for t in texts:
        enc.encode_ordinary(t)
    return n / (time.perf_counter() - t0) / 1e6


def train_and_eval(data: Path, run: Path, steps: int, fim_rate: float) -> tuple[float, dict]:
    shutil.rmtree(run, ignore_errors=True)
    secs = pipeline(
        "train",
        "--config",
        "configs/demo.yaml",
        f"data={data}",
        f"out_dir={run}",
        f"max_iters={steps}",
        f"fim_rate={fim_rate}",
        f"eval_interval={steps}",
        f"ckpt_interval={steps}",
    )
    pipeline("eval", f"out_dir={run}", "fim_windows=0", "progress_seconds=0")
    (found,) = sorted((run / "eval").glob("step-*.json"))
    return secs, json.loads(found.read_text())


def texts_of(folder: Path, limit: int = 4_000_000) -> list[str]:
    """Some of a shard folder's documents as text (its own tokenizer decodes them)."""
    import numpy as np

    from model.shards import list_shards, open_shard

    m = read_manifest(folder)
    assert m is not None
    tok = tokenizer.from_record(m.tokenizer, folder)
    ids = np.asarray(open_shard(list_shards(folder, "train")[0]))
    docs = np.split(ids, np.flatnonzero(ids == tok.eot) + 1)[:-1]
    out, n = [], 0
    for d in docs:
        out.append(tok.decode(d[:-1].tolist()))
        n += len(out[-1])
        if n >= limit:
            break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", type=Path, default=REPO / "data" / "bench" / "tokenizer")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "tokenizer.md")
    args = ap.parse_args()
    work = args.work
    demo_src = work / "sample"
    if not (demo_src / ".done").exists():
        pipeline("sample-data", "--config", "configs/sample-data.yaml", f"output={demo_src}")
        (demo_src / ".done").write_text("")
    corpora = {
        "demo": (demo_src, "github-code"),
        "second": (second_corpus(work / "second-src"), "files"),
    }
    lines = [
        "# Tokenizers: gpt2 against p50k",
        "",
        f"`python bench/tokenizer_bench.py --steps {args.steps}` on {platform.node()}, "
        f"{os.cpu_count()} CPUs, {dt.date.today()}, torch on the CPU, one run each.",
        "",
        "## Bytes per token (each corpus encoded both ways: the same documents)",
        "",
        "| corpus | language | bytes | gpt2 tokens | p50k tokens | gpt2 B/token | p50k B/token | p50k/gpt2 tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    speed = []
    for corpus, (src, schema) in corpora.items():
        counts = {}
        for name in NAMES:
            out = work / "shards" / f"{corpus}-{name}"
            secs = tokenize(src, schema, out, name)
            counts[name] = per_language(out)
            speed.append((corpus, name, counts[name]["all"][0] / secs / 1e6))
        langs = sorted(counts["gpt2"], key=lambda k: -counts["gpt2"][k][0])
        langs = [*[k for k in langs if k != "all"][:6], "all"]
        for lang in langs:
            (b, g), (b2, p) = counts["gpt2"][lang], counts["p50k"][lang]
            assert b == b2, f"{corpus} {lang}: {b} vs {b2} bytes: not the same documents"
            lines.append(
                f"| {corpus} | {lang} | {b:,} | {g:,} | {p:,} | {b / g:.2f} | {b / p:.2f} | {p / g:.3f} |"
            )
    texts = texts_of(work / "shards" / "demo-gpt2")
    lines += [
        "",
        "## Tokenize speed (the stage, workers=2, the whole corpus; tiktoken alone on one core)",
        "",
        "| corpus | tokenizer | stage M bytes/s |",
        "| --- | --- | ---: |",
        *(f"| {c} | {n} | {r:.2f} |" for c, n, r in speed),
        "",
        "| tokenizer | tiktoken encode_ordinary, 1 core, M bytes/s (4 MB of the demo) |",
        "| --- | ---: |",
        *(f"| {n} | {tiktoken_rate(texts, n):.2f} |" for n in NAMES),
    ]
    lines += [
        "",
        f"## configs/demo.yaml, {args.steps} steps (1,024 tokens a step), then `make eval` on the val split",
        "",
        "| corpus | fim_rate | tokenizer | train s | val bytes | val tokens | bits/byte | p50k vs gpt2 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    results: dict[str, Any] = {}
    for corpus, fim_rate in (("demo", 0.0), ("demo", 0.5), ("second", 0.5)):
        got = {}
        for name in NAMES:
            data = work / "shards" / f"{corpus}-{name}"
            run = work / "runs" / f"{corpus}-{name}-fim{fim_rate}"
            secs, ev = train_and_eval(data, run, args.steps, fim_rate)
            (all_row,) = [r for r in ev["rows"] if r["language"] == "all"]
            got[name] = (secs, all_row, ev["rows"])
        assert (
            got["gpt2"][1]["bytes"] == got["p50k"][1]["bytes"]
            or abs(got["gpt2"][1]["bytes"] - got["p50k"][1]["bytes"]) < 64
        ), "the two evals scored different bytes"
        base = got["gpt2"][1]["bits_per_byte"]
        for name in NAMES:
            secs, row, _ = got[name]
            rel = f"{100 * (row['bits_per_byte'] / base - 1):+.1f} %" if name == "p50k" else ""
            lines.append(
                f"| {corpus} | {fim_rate} | {name} | {secs:.0f} | {row['bytes']:,} | "
                f"{row['tokens']:,} | {row['bits_per_byte']:.4f} | {rel} |"
            )
        results[f"{corpus}-{fim_rate}"] = {n: got[n][2] for n in NAMES}
    lines += ["", "Per language (bits per byte, the runs above):", ""]
    lines += [
        "| corpus | fim_rate | language | gpt2 | p50k | p50k vs gpt2 |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for key, by in results.items():
        corpus, rate = key.rsplit("-", 1)
        p50k = {r["language"]: r for r in by["p50k"]}
        for r in by["gpt2"]:
            q = p50k.get(r["language"])
            if q is None or not r["tokens"]:
                continue
            a, b = r["bits_per_byte"], q["bits_per_byte"]
            lines.append(
                f"| {corpus} | {rate} | {r['language']} | {a:.4f} | {b:.4f} | {100 * (b / a - 1):+.1f} % |"
            )
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
