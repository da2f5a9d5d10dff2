"""`python -m pipeline humaneval`: pass@k, the problems, scoring files and a real checkpoint.

The canonical solutions must all pass and wrong answers none; hostile completions are
scored as failures (the sandbox's own tests, test_sandbox.py, cover each attack in depth).
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest
import torch

from model.trainer import Trainer
from pipeline.__main__ import main
from pipeline.humaneval import problems as he
from tests.model.train_fixtures import tiny_config


def test_pass_at_k_is_the_codex_estimator() -> None:
    for n in range(1, 25):
        for c in range(n + 1):
            for k in (1, 5, 10, 20):
                if k > n:
                    continue
                exact = 1 - comb(n - c, k) / comb(n, k)  # the paper's definition
                assert he.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)
    assert he.pass_at_k(200, 0, 100) == 0.0 and he.pass_at_k(200, 150, 100) == 1.0


def test_problems_selection_and_stop_sequences() -> None:
    every = he.load()
    assert len(every) == 164 and every[0]["task_id"] == "HumanEval/0"
    assert [p["task_id"] for p in he.load("3:5")] == ["HumanEval/3", "HumanEval/4"]
    assert [p["task_id"] for p in he.load("7, HumanEval/2")] == ["HumanEval/7", "HumanEval/2"]
    with pytest.raises(Exception, match="no problem"):
        he.load("999")
    body = "    return x + 1\n"
    for stop in he.STOP:
        assert he.truncate(body + stop + " tail():\n    pass\n") == body
    assert (
        he.truncate(body + "    # a comment inside stays\n")
        == body + "    # a comment inside stays\n"
    )


def _score(tmp_path: Path, *args: str) -> dict:
    assert main(["humaneval", f"dest={tmp_path}", *args]) == 0
    return json.loads((tmp_path / "humaneval.json").read_text())


@pytest.mark.slow
def test_the_canonical_solutions_pass_and_wrong_answers_fail(tmp_path: Path) -> None:
    ref = _score(tmp_path / "ref", "reference=true")
    assert (ref["problems"], ref["solved"], ref["pass@1"]) == (164, 164, 1.0)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(
        "".join(
            json.dumps({"task_id": p["task_id"], "completion": "    return None\n"}) + "\n"
            for p in he.load()
        )
    )
    bad = _score(tmp_path / "bad", f"samples={wrong}")
    assert (bad["samples"], bad["solved"], bad["pass@1"]) == (164, 0, 0.0)


def test_hostile_and_mixed_samples_are_scored_and_the_harness_survives(tmp_path: Path) -> None:
    p0, p1 = he.load("0:2")
    rows = [
        (p0, p0["canonical_solution"]),
        (p0, "    while True:\n        pass\n"),  # loops for ever
        (p0, "    import os\n    while True:\n        os.fork()\n"),  # a fork bomb
        (p1, p1["canonical_solution"]),
        (p1, "    return []\n"),  # wrong
        (p1, "    x = [0] * 10**10\n"),  # allocates without bound
    ]
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        "".join(json.dumps({"task_id": p["task_id"], "completion": c}) + "\n" for p, c in rows)
    )
    r = _score(tmp_path / "out", f"samples={samples}", "problems=0:2", "timeout=2")
    per = r["per_problem"]
    assert per["HumanEval/0"]["correct"] == 1 and per["HumanEval/0"]["n"] == 3
    assert per["HumanEval/1"]["correct"] == 1 and per["HumanEval/1"]["n"] == 3
    assert per["HumanEval/0"]["status"].get("timeout", 0) >= 1
    assert r["pass@1"] == pytest.approx(1 / 3)


def test_bad_samples_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n')
    assert main(["humaneval", f"samples={bad}", "problems=0:1"]) == 2
    assert f"{bad}:2: not a {{task_id, completion}} JSON object" in capsys.readouterr().err
    assert main(["humaneval", f"samples={bad.with_name('none.jsonl')}"]) == 2
    assert "no such file" in capsys.readouterr().err
    ok = tmp_path / "one.jsonl"
    ok.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n')
    assert main(["humaneval", f"samples={ok}", "problems=0:2"]) == 2
    assert "no samples for HumanEval/1" in capsys.readouterr().err


def test_sampling_a_real_checkpoint_writes_both_files(tmp_path: Path, code_shards: Path) -> None:
    cfg = tiny_config(code_shards, tmp_path / "run", vocab_size=50304, block_size=128)
    Trainer(cfg, torch.device("cpu"), tmp_path / "run").save()
    args = ["n=3", "problems=0:2", "max_new_tokens=12", "temperature=0.8", "timeout=2"]
    assert main(["humaneval", f"out_dir={tmp_path / 'run'}", *args]) == 0
    lines = (tmp_path / "run" / "humaneval" / "samples.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["task_id"] for r in recs] == ["HumanEval/0"] * 3 + ["HumanEval/1"] * 3
    r = json.loads((tmp_path / "run" / "humaneval" / "humaneval.json").read_text())
    assert r["samples"] == 6 and "pass@1" in r and "pass@10" not in r  # n < 10
    assert r["settings"]["n"] == 3 and set(r["sandbox"]) == {"network", "filesystem", "pid"}


# ------------------------------------------------------------------ fill in the middle


def test_the_infilling_benchmarks_load_whole_and_checked() -> None:
    for name, (_, _, count) in he.FILES.items():
        tasks = he.load(benchmark=name)
        assert len(tasks) == count and all(he.is_infilling(t) for t in tasks)
    light = he.load("0:164:41", "random-span-light")
    assert [t["task_id"] for t in light] == [
        f"RandomSpanInfillingLight/HumanEval/{i}/1" for i in (0, 41, 82, 123)
    ]
    one = he.load("SingleLineInfilling/HumanEval/0/L0", "single-line")[0]
    assert he.program(one, "X").startswith(one["prompt"] + "X" + one["suffix"] + "\n")
    assert he.program(one, "X").endswith(f"check({one['entry_point']})\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("benchmark", "problems"),
    [("random-span-light", ""), ("single-line", "0:1033:8"), ("random-span", "0:1640:12")],
)
def test_the_canonical_middles_pass_and_a_wrong_middle_fails(
    tmp_path: Path, benchmark: str, problems: str
) -> None:
    """Every light task, and a spread eighth / twelfth of the others (all 2,837: by hand)."""
    ref = _score(
        tmp_path / "ref", "reference=true", f"benchmark={benchmark}", f"problems={problems}"
    )
    assert ref["pass@1"] == 1.0 and ref["solved"] == ref["problems"] > 100


def test_a_middle_that_breaks_the_program_fails(tmp_path: Path) -> None:
    tasks = he.load("0:20", "single-line")
    wrong = tmp_path / "wrong.jsonl"  # the right middle, then a line that breaks the program
    wrong.write_text(
        "".join(
            json.dumps({"task_id": t["task_id"], "completion": t["canonical_solution"] + "\n)"})
            + "\n"
            for t in tasks
        )
    )
    bad = _score(tmp_path / "bad", f"samples={wrong}", "benchmark=single-line", "problems=0:20")
    assert (bad["problems"], bad["solved"]) == (20, 0)
    with pytest.raises(Exception, match="selects none"):
        he.load("5:5", "single-line")


def test_a_problems_file_of_the_same_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    tasks = he.load("0:3", "single-line")
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    ref = _score(tmp_path / "ref", "reference=true", f"problems_file={path}")
    assert (ref["problems"], ref["pass@1"], ref["benchmark"]) == (3, 1.0, str(path))
    with gzip.open(tmp_path / "mine.jsonl.gz", "wt") as f:
        f.write(json.dumps(tasks[0]) + "\n")
    assert _score(tmp_path / "gz", "reference=true", f"problems_file={path}.gz")["problems"] == 1
    path.write_text('{"task_id": "x", "prompt": "p"}\n')
    assert main(["humaneval", "reference=true", f"problems_file={path}"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: no canonical_solution, test, entry_point" in err and err.count("\n") == 1


def test_infilling_samples_a_fim_run_and_refuses_a_left_to_right_one(
    tmp_path: Path, shards: Path, code_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = code_shards
    args = ["benchmark=single-line", "n=2", "problems=0:2", "max_new_tokens=8", "timeout=2"]
    plain = tiny_config(shards, tmp_path / "plain", vocab_size=50304, block_size=512)
    Trainer(plain, torch.device("cpu"), tmp_path / "plain").save()
    assert main(["humaneval", f"out_dir={tmp_path / 'plain'}", *args]) == 2
    assert "trained with fim_rate=0, so it cannot fill in the middle" in capsys.readouterr().err
    fim = tiny_config(code, tmp_path / "fim", vocab_size=50304, block_size=512, fim_rate=0.5)
    Trainer(fim, torch.device("cpu"), tmp_path / "fim").save()
    assert main(["humaneval", f"out_dir={tmp_path / 'fim'}", *args]) == 0
    recs = [
        json.loads(x)
        for x in (tmp_path / "fim/humaneval/samples.jsonl").read_text().split("\n")
        if x
    ]
    assert [r["task_id"] for r in recs] == [
        t["task_id"] for t in he.load("0:2", "single-line") for _ in "ab"
    ]
    from model import tokenizer as _tokenizer
    from model.checkpoint import load_for_inference
    from model.fim import psm_prompt
    from model.generate import Sampling, generate_batch

    decode = _tokenizer.get().decode  # GPT-2's (the fixtures' tokenizer)

    model, _, _ = load_for_inference(tmp_path / "fim")
    t0 = he.load("0:1", "single-line")[0]
    g = torch.Generator().manual_seed(1337)
    s = Sampling(temperature=0.2, top_k=0, top_p=0.95)
    want = generate_batch(
        model,
        psm_prompt(_tokenizer.get(), t0["prompt"], t0["suffix"]),
        2,
        8,
        s,
        generator=g,
        fim=True,
    )
    assert [r["completion"] for r in recs[:2]] == [decode(w) for w in want]  # the PSM prompt
