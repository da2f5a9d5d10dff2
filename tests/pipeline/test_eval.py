"""`python -m pipeline eval` and model/scoring.py: per-language loss and bits per byte.

A hand-computed tally; then a real shard folder with a val document index and a real
(untrained) checkpoint: the per-language rows add up to the overall one, every val token
but the first is scored once, and the total equals an independent full-logits computation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import tokenizer
from model.checkpoint import load_for_inference
from model.dataset import open_dataset
from model.loader import Windows
from model.scoring import Languages, Tally, token_bytes
from model.shards import DOC_RECORD
from model.trainer import Trainer
from pipeline.__main__ import main
from tests.model.train_fixtures import tiny_config
from tests.pipeline.tokenize.tokenize_fixtures import RULES_OFF, corpus, make_input, tokenize


def test_bits_per_byte_of_a_hand_made_case() -> None:
    index = np.zeros(2, dtype=DOC_RECORD)
    index["start"], index["tokens"], index["bytes"] = [0, 3], [3, 3], [5, 9]
    index["language"] = [b"Go", b"Rust"]
    tally = Tally(Languages(index), tokenizer.get())
    a, bc = tokenizer.get().encode("a")[0], tokenizer.get().encode(" bc")[0]  # 1 and 3 bytes
    tally.add(
        np.array([1.0, 2.0, 3.0, 4.0]), np.array([a, bc, bc, tokenizer.EOT]), np.array([1, 2, 3, 5])
    )
    rows = {r["language"]: r for r in tally.rows()}
    assert (rows["Go"]["tokens"], rows["Go"]["bytes"]) == (2, 4)  # positions 1, 2
    assert rows["Go"]["bits_per_byte"] == pytest.approx(3.0 / math.log(2) / 4)
    assert (rows["Rust"]["tokens"], rows["Rust"]["bytes"]) == (2, 3)  # EOT has no bytes
    assert rows["Rust"]["loss"] == pytest.approx(3.5)
    assert rows["all"]["bits_per_byte"] == pytest.approx(10.0 / math.log(2) / 7)
    assert rows["all"]["documents"] == 2
    assert (
        token_bytes(tokenizer.get())[tokenizer.EOT] == 0
        and token_bytes(tokenizer.get())[50300] == 0
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("eval")
    # 240 documents of 500 characters (~11 K val tokens): the checks hold at any size, and
    # scoring costs per val token (1500 characters each took 16 s on 2 cores)
    docs = corpus(240, max_chars=500)
    for d in docs[40:80]:
        d["language"] = "Go"
    src = make_input(tmp / "in", docs, files=2)
    data = tmp / "shards"
    assert tokenize(src, data, shard_tokens=7000, val_fraction=0.3, **RULES_OFF) == 0
    cfg = tiny_config(data, tmp / "run", vocab_size=50304, block_size=64, micro_batch=2)
    trainer = Trainer(cfg, torch.device("cpu"), tmp / "run")
    trainer.save()  # step 0: an untrained model scores as well as any for these checks
    assert main(["eval", f"out_dir={tmp / 'run'}", "micro_batch=3"]) == 0
    result = json.loads((tmp / "run" / "eval" / "step-0000000.json").read_text())
    return data, tmp / "run", result


def test_the_languages_add_up_to_the_whole(scored: tuple[Path, Path, dict]) -> None:
    data, _, result = scored
    rows = {r["language"]: r for r in result["rows"]}
    assert {"Python", "Markdown", "Go"} <= set(rows) and "all" in rows
    parts = [r for k, r in rows.items() if k != "all"]
    for key in ("documents", "tokens", "bytes"):
        assert sum(r[key] for r in parts) == rows["all"][key], key
    nats = sum(r["loss"] * r["tokens"] for r in parts)
    assert nats == pytest.approx(rows["all"]["loss"] * rows["all"]["tokens"], rel=1e-9)
    val = Windows(open_dataset(data, 50304).shards["val"], "val", 64, 50304)
    assert (
        result["whole_split"] and result["tokens_scored"] == rows["all"]["tokens"] == val.tokens - 1
    )
    m = json.loads((data / "manifest.json").read_text())
    assert rows["all"]["documents"] == sum(
        d["documents"] for d in m["counts"]["languages"]["val"].values()
    )
    # every target's bytes: the documents' UTF-8 bytes but the first token's
    first = int(val.read(0, 1)[0])
    assert rows["all"]["bytes"] + token_bytes(tokenizer.get())[first] == sum(
        d["bytes"] for d in m["counts"]["languages"]["val"].values()
    )


def test_the_total_equals_a_full_logits_computation(scored: tuple[Path, Path, dict]) -> None:
    data, run, result = scored
    model, cfg, _ = load_for_inference(run)
    stream = torch.from_numpy(
        Windows(open_dataset(data, 50304).shards["val"], "val", 64, 50304).read(
            0, result["tokens_scored"] + 1
        )
    )
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(stream) - 1, cfg.block_size):  # the same windows, the tail too
            x = stream[s : s + cfg.block_size][None]
            y = stream[s + 1 : s + 1 + cfg.block_size][None]
            x = x[:, : y.shape[1]]
            logits, _ = model(x)
            total += float(F.cross_entropy(logits[0].float(), y[0], reduction="sum"))
    rows = {r["language"]: r for r in result["rows"]}
    assert rows["all"]["loss"] * rows["all"]["tokens"] == pytest.approx(total, rel=1e-5)


def test_max_tokens_scores_windows_spread_over_the_split(scored: tuple[Path, Path, dict]) -> None:
    _, run, _ = scored
    assert main(["eval", f"out_dir={run}", "max_tokens=640"]) == 0
    result = json.loads((run / "eval" / "step-0000000.json").read_text())
    assert result["tokens_scored"] == 640 and not result["whole_split"]


@pytest.mark.parametrize("stage", ["eval", "export", "humaneval"])
def test_no_run_is_one_line(stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each stage that loads a trained model says the same when there is none."""
    assert main([stage, f"out_dir={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(
        "no such checkpoint or run folder; train first (`make train`)"
    )


def test_training_logs_the_val_loss_per_language_and_plot_and_report_show_it(
    scored: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    from model.metrics import read_metrics
    from pipeline.train import train

    data = scored[0]
    cfg = tiny_config(
        data, tmp_path / "run", vocab_size=50304, block_size=64, max_iters=6, eval_interval=3
    )
    assert train(cfg) == 0
    evals = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    for r in evals:
        langs = r["val_by_language"]
        assert set(langs) <= {"Python", "Markdown", "Go", "other"} and len(langs) >= 2
        assert min(langs.values()) <= r["val_loss"] <= max(langs.values())
    assert main(["plot", f"out_dir={tmp_path / 'run'}"]) == 0
    h, w = matplotlib.image.imread(tmp_path / "run" / "loss.png").shape[:2]
    assert h > 0.75 * w  # the second panel below (one panel alone is about 0.6 w)
    assert main(["report", f"out_dir={tmp_path / 'run'}"]) == 0
    assert "by language  " in capsys.readouterr().out


def test_fim_rows_score_the_same_middle_tokens_both_ways(
    scored: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    from model import fim

    data, run, result = scored
    a, b = result["fim"]["with_suffix"], result["fim"]["prefix_only"]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b] and a[-1]["tokens"] > 100
    assert result["fim"]["windows"] == min(256, result["tokens_scored"] // 64)
    # four windows, by hand with the full logits: the middle tokens in both layouts
    assert main(["eval", f"out_dir={run}", "fim_windows=4", "max_tokens=64"]) == 0
    four = json.loads((run / "eval" / "step-0000000.json").read_text())["fim"]
    model, _, _ = load_for_inference(run)
    val = Windows(open_dataset(data, 50304).shards["val"], "val", 64, 50304)
    ks = val.spread(4)
    nll: dict[bool, dict[tuple[int, int, int], float]] = {False: {}, True: {}}
    for k, row in zip(ks.tolist(), val.rows(ks), strict=True):
        for l2r in (False, True):
            ex = fim.transform(
                row, fim.Rates(1.0, 0.0), fim.window_rng(0, 0, k), tokenizer.get(), l2r
            )
            assert ex is not None
            toks = torch.from_numpy(np.where(ex.tokens == tokenizer.get().fim_pad, 0, ex.tokens))
            with torch.no_grad():
                logits, _ = model(toks[None, :-1])
            assert logits is not None
            per = F.cross_entropy(logits[0].float(), toks[1:], reduction="none").numpy()
            mid = ex.role[1:] == fim.MIDDLE
            # the k-th middle token of a piece: its rank is its count so far in that piece
            origin = ex.origin[1:][mid].tolist()
            rank = [origin[:i].count(o) for i, o in enumerate(origin)]
            for o, r, v in zip(origin, rank, per[mid].tolist(), strict=True):
                nll[l2r][(k, o, r)] = v
    common = nll[False].keys() & nll[True].keys()
    assert four["with_suffix"][-1]["tokens"] == len(common) > 0
    want = [np.mean([nll[l2r][c] for c in common]) for l2r in (False, True)]
    got = [four["with_suffix"][-1]["loss"], four["prefix_only"][-1]["loss"]]
    assert got == pytest.approx(want, rel=1e-4)
