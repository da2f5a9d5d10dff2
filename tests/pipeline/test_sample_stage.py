"""`python -m pipeline sample`: a real checkpoint in a run folder, the real CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import tokenizer as _tokenizer
from model.checkpoint import CONFIG, MODEL, save_checkpoint
from model.fim import psm_prompt
from model.generate import Sampling, generate
from model.gpt import GPT, GPTConfig
from pipeline.__main__ import main
from pipeline.sample import MARK, SEPARATOR
from tests.conftest import REPO
from tests.model.train_fixtures import tiny_config

decode = _tokenizer.get().decode  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with one checkpoint of a tiny GPT over the full GPT-2 vocabulary."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(out, out, vocab_size=50304, block_size=32)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_train(cfg))
    save_checkpoint(out, 3, {MODEL: model.state_dict(), CONFIG: dataclasses.asdict(cfg)})
    return out


@pytest.fixture(scope="module")
def fim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny GPT, saved as a run trained with fill-in-the-middle."""
    out = tmp_path_factory.mktemp("fim-run")
    cfg = tiny_config(out, out, vocab_size=50304, block_size=64, fim_rate=0.5)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_train(cfg))
    save_checkpoint(out, 3, {MODEL: model.state_dict(), CONFIG: dataclasses.asdict(cfg)})
    return out


def sample(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["sample", *args])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_same_seed_same_text_and_the_prompt_comes_first(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the value is YAML: a prompt with ': ' or a trailing ':' is quoted
    args = (f"out_dir={run_dir}", 'prompt="def main():"', "max_new_tokens=40", "device=cpu")
    code, a, _ = sample(capsys, *args, "seed=1")
    _, b, _ = sample(capsys, *args, "seed=1")
    _, c, _ = sample(capsys, *args, "seed=2")
    assert code == 0 and a == b and a != c
    assert a.startswith("def main():") and len(a) > len("def main():\n")


def test_greedy_output_is_the_decoded_greedy_tokens(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = sample(
        capsys, f"out_dir={run_dir}", "prompt=import os", "temperature=0", "max_new_tokens=25"
    )
    from model.checkpoint import load_for_inference

    model, _, _ = load_for_inference(run_dir)
    want = list(generate(model, encode("import os"), 25, Sampling(temperature=0)))
    assert code == 0 and out == "import os" + decode(want) + "\n"


def test_suffix_fills_in_the_middle_and_prints_it_marked(
    fim_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as the README's command writes it: \\n on the command line is a newline
    args = ("prompt=def f(x):\\n    ", "suffix=\\n    return y\\n", "temperature=0")
    code, out, _ = sample(capsys, f"out_dir={fim_run}", *args, "max_new_tokens=12")
    from model.checkpoint import load_for_inference

    model, _, _ = load_for_inference(fim_run)
    prompt = psm_prompt(_tokenizer.get(), "def f(x):\n    ", "\n    return y\n")
    middle = list(generate(model, prompt, 12, Sampling(temperature=0), fim=True))
    assert code == 0
    assert out == f"def f(x):\n    {MARK[0]}{decode(middle)}{MARK[1]}\n    return y\n"


def test_suffix_on_a_run_trained_without_fim_is_refused(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = sample(capsys, f"out_dir={run_dir}", "prompt=a", "suffix=b")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "trained with fim_rate=0, so it cannot fill in the middle" in err


def test_escapes_on_the_command_line_and_off(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = (f"out_dir={run_dir}", "temperature=0", "max_new_tokens=3")
    _, out, _ = sample(capsys, *common, "prompt=a\\tb\\\\n")
    assert out.startswith("a\tb\\n")  # \\\\ is one backslash, then n
    _, out, _ = sample(capsys, *common, "prompt=a\\tb", "escapes=false")
    assert out.startswith("a\\tb")


def test_num_samples_prompt_file_and_the_empty_prompt(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.py").write_text("class Foo:\n", encoding="utf-8")
    code, out, _ = sample(
        capsys,
        f"out_dir={run_dir}",
        f"prompt_file={tmp_path / 'p.py'}",
        "num_samples=3",
        "max_new_tokens=8",
    )
    assert code == 0 and out.count("class Foo:\n") == 3 and out.count(SEPARATOR) == 2
    code, out, _ = sample(capsys, f"ckpt={run_dir / 'ckpt-00000003.pt'}", "max_new_tokens=5")
    assert code == 0 and "<|endoftext|>" not in out


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["out_dir={tmp}/nothing"], "no such checkpoint or run folder; train first"),
        (["out_dir={tmp}"], "no checkpoint (ckpt-*.pt); train first"),
        (["out_dir={tmp}", "prompt=a", "prompt_file=b"], "prompt and prompt_file are both set"),
        (["out_dir={tmp}", "top_p=0"], "top_p=0.0 must be > 0"),
    ],
)
def test_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    code, out, err = sample(capsys, *(a.format(tmp=tmp_path) for a in args))
    assert code == 2 and out == ""
    assert err.startswith("codegpt sample: error: ") and expect in err
    assert err.count("\n") == 1


def test_the_command_line_streams_real_text(run_dir: Path) -> None:
    env = {**os.environ, "CODEGPT_LOG": "WARNING"}
    cmd = [sys.executable, "-m", "pipeline", "sample", f"out_dir={run_dir}", "prompt=x = 1"]
    proc = subprocess.run(
        [*cmd, "max_new_tokens=10", "seed=3"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("x = 1") and proc.stderr == ""
