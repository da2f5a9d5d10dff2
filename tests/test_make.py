"""The Makefile: docker command lines (parsed, never run), stamps on real stage runs.

Every test runs `make -f <repo>/Makefile` in its own temporary folder, so the stages'
outputs (data/, out/, .stamps/) land there and not in the checkout. There is no
Docker engine here: docker mode is checked through `make -n` (the command lines,
split with shlex) and, where a docker CLI exists, through its own flag parser.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import main
from pipeline.corpus.settings import SourceConfig
from pipeline.dedup.stage import DedupConfig
from pipeline.tokenize.stage import TokenizeConfig
from tests.conftest import REPO

MAKEFILE = REPO / "Makefile"
IMAGE = "codegpt-test"
MEM = "6g"
SHM = "1g"
GPU_STAGES = {"plan", "smoke", "train", "sample", "serve", "eval", "humaneval"}
CPU_STAGES = {"sample-data", "dedup", "tokenize", "export", "plot", "report"}
# Variables the Makefile reads; a developer's environment must not leak into the tests.
MAKE_VARS = {
    *("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "DOCKER_HOST"),
    *("RUN", "IMAGE", "MEM", "GPUS", "SHM", "NPROC", "RUN_NAME", "ARGS"),
    *("CONFIG", "TOKENIZE_CONFIG", "DEDUP_CONFIG", "SAMPLE_CONFIG", "SAMPLE_DATA_CONFIG"),
    *("TRAIN_ARGS", "TOKENIZE_ARGS", "DEDUP_ARGS", "SAMPLE_ARGS", "SAMPLE_DATA_ARGS", "OUT_ARGS"),
    *("SERVE_CONFIG", "SERVE_ARGS", "PORT"),
}


def make(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in MAKE_VARS}
    clean["OMP_NUM_THREADS"] = "1"  # tiny models; one thread is fastest on a shared CPU
    clean.update(env or {})
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(MAKEFILE), *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A folder with the repository's configs, as a fresh checkout has them."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


# ---------------------------------------------------------------- docker mode


@dataclass
class DockerRun:
    """`docker run [options] IMAGE [command...]`, split into its parts."""

    flags: set[str] = field(default_factory=set)  # --rm, --init
    values: dict[str, list[str]] = field(default_factory=dict)  # option -> values
    image: str = ""
    command: list[str] = field(default_factory=list)


VALUE_OPTIONS = {"--user", "-v", "-e", "-p", "--gpus", "--entrypoint"}


def parse_docker_run(line: str) -> DockerRun:
    words = shlex.split(line)
    assert words[:2] == ["docker", "run"], line
    run = DockerRun()
    i = 2
    while i < len(words) and words[i].startswith("-"):
        w = words[i]
        if "=" in w:
            k, v = w.split("=", 1)
            run.values.setdefault(k, []).append(v)
        elif w in VALUE_OPTIONS:
            run.values.setdefault(w, []).append(words[i + 1])
            i += 1
        else:
            run.flags.add(w)
        i += 1
    run.image, run.command = words[i], words[i + 1 :]
    return run


def docker_lines(box: Path, *args: str) -> list[str]:
    r = make(box, "-n", "RUN=docker", f"IMAGE={IMAGE}", f"MEM={MEM}", f"SHM={SHM}", *args)
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.splitlines() if ln.startswith("docker run")]


def stage_run(box: Path, stage: str, *args: str) -> DockerRun:
    """The one `docker run` line of `make -n RUN=docker <stage>` that runs that stage."""
    runs = [parse_docker_run(ln) for ln in docker_lines(box, stage, *args)]
    mine = [r for r in runs if stage in r.command]  # the prerequisites' runs come first
    assert mine, runs
    return mine[-1]


@pytest.mark.parametrize("stage", sorted(GPU_STAGES | CPU_STAGES))
def test_every_stage_runs_in_the_image_with_limits_and_mounts(box: Path, stage: str) -> None:
    run = stage_run(box, stage)
    assert {"--rm", "--init"} <= run.flags
    assert run.values["--memory"] == [MEM]
    assert run.values["--memory-swap"] == [MEM]  # equal: no swap at all
    assert run.values["--shm-size"] == [SHM]
    assert run.values["--user"] == [f"{os.getuid()}:{os.getgid()}"]
    assert sorted(run.values["-v"]) == sorted(
        [
            f"{box}/data:/app/data",
            f"{box}/out:/app/out",
            f"{box}/configs:/app/configs:ro",
        ]
    )
    assert run.image == IMAGE
    assert run.command[0] == stage
    if stage in GPU_STAGES:
        assert run.values["--gpus"] == ["all"]
    else:
        assert "--gpus" not in run.values


def test_stage_arguments_in_docker_mode(box: Path) -> None:
    assert stage_run(box, "tokenize").command == ["tokenize", "--config", "configs/tokenize.yaml"]
    assert stage_run(box, "smoke").command == ["smoke", "--config", "configs/gpt2-124m.yaml"]
    assert stage_run(box, "train").command == ["train", "--config", "configs/gpt2-124m.yaml"]
    assert stage_run(box, "sample").command == [
        "sample",
        "--config",
        "configs/sample.yaml",
        "out_dir=out/gpt2-124m",
    ]
    assert stage_run(box, "plot", "CONFIG=configs/demo.yaml").command == [
        "plot",
        "out_dir=out/demo",
    ]


def test_serve_publishes_its_port_on_loopback_only(box: Path) -> None:
    run = stage_run(box, "serve", "CONFIG=configs/demo.yaml", "PORT=9001")
    assert run.values["-p"] == ["127.0.0.1:9001:8000"]  # the host's loopback only
    assert "CODEGPT_API_KEY" in run.values["-e"]
    # inside the container it listens on the container's interfaces, on the published port
    assert run.command[:3] == ["serve", "--config", "configs/serve.yaml"]
    assert {"out_dir=out/demo", "host=0.0.0.0", "port=8000"} <= set(run.command)
    r = make(box, "-n", "RUN=local", "serve", "CONFIG=configs/demo.yaml", "PORT=9001")
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if " -m pipeline serve " in ln]
    assert "out_dir=out/demo port=9001" in line and "host=" not in line  # 127.0.0.1


def test_demo_config_pairs_with_its_tokenize_config(box: Path) -> None:
    runs = [parse_docker_run(ln) for ln in docker_lines(box, "smoke", "CONFIG=configs/demo.yaml")]
    # data/shards/demo comes from configs/demo-tokenize.yaml, whose input is sample-data's
    # output and whose near_dedup is configs/demo-dedup.yaml's output
    assert [r.command[:3] for r in runs] == [
        ["sample-data", "--config", "configs/sample-data.yaml"],
        ["dedup", "--config", "configs/demo-dedup.yaml"],
        ["tokenize", "--config", "configs/demo-tokenize.yaml"],
        ["smoke", "--config", "configs/demo.yaml"],
    ]


def test_humaneval_runs_without_a_network_in_the_container(box: Path) -> None:
    """The sandbox cannot make a network namespace inside Docker: the container has none."""
    run = stage_run(box, "humaneval")
    assert run.values["--network"] == ["none"] and "--gpus" in run.values
    assert run.command[:3] == ["humaneval", "--config", "configs/humaneval.yaml"]
    assert "--network" not in stage_run(box, "eval").values


def test_train_on_several_gpus_uses_torchrun(box: Path) -> None:
    """torchrun's launcher through pipeline/launch.py (its failures in one line)."""
    run = stage_run(box, "train", "NPROC=4")
    assert run.values["--entrypoint"] == ["python"]
    assert run.values["--gpus"] == ["all"]
    assert run.command == [
        "-m",
        "pipeline.launch",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "pipeline",
        "train",
        "--config",
        "configs/gpt2-124m.yaml",
    ]


@pytest.mark.parametrize("how", ["config", "args"])
def test_a_grad_accum_that_nproc_does_not_divide_is_one_line_before_anything_runs(
    box: Path, how: str
) -> None:
    """configs/demo.yaml's grad_accum 1 on 2 processes (or ARGS' 6 on 4): refused by make
    itself, before smoke or torchrun start (no process imports torch), exit 2."""
    args = ["NPROC=2", "CONFIG=configs/demo.yaml"]
    if how == "args":
        args = ["NPROC=4", "ARGS=grad_accum=6"]
    r = make(box, "RUN=local", "train", *args)
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    ga, n = ("1", "2") if how == "config" else ("6", "4")
    assert f"grad_accum={ga} " in line and f"not divisible by NPROC={n} processes" in line
    assert "Traceback" not in line and not (box / "out").exists()
    ok = make(
        box, "-n", "RUN=local", "train", "NPROC=2", "CONFIG=configs/demo.yaml", "ARGS=grad_accum=4"
    )
    assert ok.returncode == 0 and "-m pipeline.launch --standalone --nproc_per_node=2" in ok.stdout


def test_gpus_variable(box: Path) -> None:
    # docker wants the quotes around a device list (its value is CSV)
    assert stage_run(box, "smoke", 'GPUS="device=0,1"').values["--gpus"] == ['"device=0,1"']
    assert "--gpus" not in stage_run(box, "smoke", "GPUS=").values


def test_args_go_to_the_named_stage_family_only(box: Path) -> None:
    runs = [parse_docker_run(ln) for ln in docker_lines(box, "train", "ARGS=lr=1e-3")]
    by_stage = {r.command[0]: r.command for r in runs}
    assert by_stage["tokenize"] == ["tokenize", "--config", "configs/tokenize.yaml"]
    assert by_stage["smoke"][-1] == "lr=1e-3"  # smoke proves what train runs
    assert by_stage["train"][-1] == "lr=1e-3"


def commands(box: Path, *args: str) -> list[list[str]]:
    """The stage command lines `make -n RUN=docker ARGS...` would run, in order."""
    return [parse_docker_run(ln).command for ln in docker_lines(box, *args)]


def test_tokenize_args_reach_the_dedup_it_runs_first(box: Path) -> None:
    """`make tokenize ARGS="input=..."`: one input, given once, reaches both stages."""
    assert commands(box, "tokenize", "ARGS=input=data/mine") == [
        ["dedup", "--config", "configs/dedup.yaml", "input=data/mine"],
        ["tokenize", "--config", "configs/tokenize.yaml", "input=data/mine"],
    ]
    # a near_dedup folder in ARGS is where that dedup writes its decision
    dedup, tokenize = commands(box, "tokenize", "ARGS=near_dedup=data/dedup/mine")
    assert dedup == ["dedup", "--config", "configs/dedup.yaml", "output=data/dedup/mine"]
    assert tokenize[-1] == "near_dedup=data/dedup/mine"
    # near_dedup="" turns it off: no dedup at all
    assert [c[0] for c in commands(box, "tokenize", 'ARGS=near_dedup=""')] == ["tokenize"]
    # `make dedup` itself takes ARGS as they are
    assert commands(box, "dedup", "ARGS=threshold=0.8")[-1][-1] == "threshold=0.8"


@pytest.mark.parametrize(
    "given",
    [
        ["input=data/stack", "schema=the-stack"],
        ["input=data/dump.jsonl.zst"],
        ["input=data/mine", "text_column=body", "repo_column=project"],
        ["input=~/src", "schema=files"],
    ],
)
def test_every_source_reaches_both_stages(box: Path, given: list[str]) -> None:
    """The input and its schema or columns, given once, reach the dedup and the tokenize."""
    assert commands(box, "tokenize", f"ARGS={' '.join(given)}") == [
        ["dedup", "--config", "configs/dedup.yaml", *given],
        ["tokenize", "--config", "configs/tokenize.yaml", *given],
    ]
    assert commands(box, "dedup", f"ARGS={' '.join(given)}") == [
        ["dedup", "--config", "configs/dedup.yaml", *given]
    ]


def test_dedup_gets_every_key_it_shares_with_tokenize_and_no_other(box: Path) -> None:
    """The Makefile's TOKENIZE_ONLY, checked against the stages' own config classes."""

    def keys(cls: type) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    given = [f"{k}=v{i}" for i, k in enumerate(keys(TokenizeConfig)) if k != "near_dedup"]
    dedup = commands(box, "tokenize", f"ARGS={' '.join(given)}")[0]
    shared = set(keys(SourceConfig))
    assert dedup[:3] == ["dedup", "--config", "configs/dedup.yaml"]
    assert dedup[3:] == [a for a in given if a.split("=")[0] in shared]
    assert shared <= set(keys(DedupConfig))  # every key sent is one dedup knows


def test_run_name_sets_the_run_folder(box: Path) -> None:
    assert "out_dir=out/exp1" in stage_run(box, "train", "RUN_NAME=exp1").command
    assert "out_dir=out/exp1" in stage_run(box, "sample", "RUN_NAME=exp1").command


def test_docker_cli_accepts_every_command_line(box: Path) -> None:
    """The docker CLI parses its flags before it looks for an engine."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine (`which docker` finds nothing)")
    lines = []
    for stage in sorted(GPU_STAGES | CPU_STAGES):
        lines += docker_lines(box, stage)
    lines += docker_lines(box, "train", "NPROC=2")
    env = {**os.environ, "DOCKER_HOST": f"unix://{box}/no-engine.sock"}
    for line in sorted(set(lines)):
        r = subprocess.run(
            [docker, *shlex.split(line)[1:]], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode != 0
        assert "Cannot connect to the Docker daemon" in r.stderr, (line, r.stderr)
    # the parser does check: a bad memory size fails before any connection attempt
    bad = docker_lines(box, "plot", "MEM=lots")[0]
    r = subprocess.run(
        [docker, *shlex.split(bad)[1:]], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert "Cannot connect" not in r.stderr
    assert "lots" in r.stderr


# ---------------------------------------------------------------- mode, help, errors


def test_auto_mode_without_an_engine_runs_on_the_host(box: Path) -> None:
    r = make(box, "-n", "plot", env={"DOCKER_HOST": f"unix://{box}/no-engine.sock"})
    assert r.returncode == 0, r.stderr
    assert "running on the host" in r.stderr
    assert "-m pipeline plot out_dir=out/gpt2-124m" in r.stdout
    assert "docker run" not in r.stdout


def test_bad_run_mode_is_refused(box: Path) -> None:
    r = make(box, "-n", "smoke", "RUN=podman")
    assert r.returncode != 0
    assert "RUN=podman" in r.stderr


def test_help_lists_every_stage_and_variable(box: Path) -> None:
    r = make(box, "help")
    assert r.returncode == 0
    for target in [*GPU_STAGES, *CPU_STAGES, "setup", "test", "image", "demo", "clean", "bench"]:
        assert f"\n  {target} " in r.stdout, target
    for var in ("RUN", "MEM", "GPUS", "SHM", "IMAGE", "CONFIG", "NPROC", "RUN_NAME", "ARGS"):
        assert f"\n  {var} " in r.stdout, var


def test_demo_runs_the_chain_on_the_host(box: Path) -> None:
    r = make(box, "-n", "demo", env={"DOCKER_HOST": f"unix://{box}/no-engine.sock"})
    assert r.returncode == 0, r.stderr
    stages = [
        shlex.split(ln)[3:]
        for ln in r.stdout.splitlines()
        if ln.startswith(f"{REPO}/.venv/bin/python -m pipeline")
    ]
    assert [s[0] for s in stages] == [
        "sample-data",
        "dedup",
        "tokenize",
        "smoke",
        "train",
        "plot",
        "report",
        "sample",
        "eval",
    ]
    assert stages[1][2] == "configs/demo-dedup.yaml"  # the config that writes near_dedup
    assert stages[3][2] == "configs/demo.yaml" and stages[4][2] == "configs/demo.yaml"
    assert "out_dir=out/demo" in stages[7] and "max_new_tokens=100" in stages[7]
    assert "docker run" not in r.stdout


def test_clean_deletes_only_what_it_says(box: Path) -> None:
    keep = [
        "data/raw/a.parquet",
        "data/shards/github-code/train_000000.npy",
        "out/gpt2-124m/ckpt-1.pt",
    ]
    gone = [
        "out/demo/ckpt-1.pt",
        "data/shards/demo/train_000000.npy",
        "data/sample/part-00000.parquet",
    ]
    for rel in keep + gone + [".stamps/smoke@configs_demo.yaml"]:
        (box / rel).parent.mkdir(parents=True, exist_ok=True)
        (box / rel).write_bytes(b"x")
    r = make(box, "clean")
    assert r.returncode == 0, r.stderr
    assert all((box / rel).exists() for rel in keep)
    assert not any((box / rel).exists() for rel in gone)
    assert not (box / ".stamps").exists()
    assert "out/demo data/shards/demo data/dedup/demo data/sample" in r.stdout


# ---------------------------------------------------------------- stamps, on real runs

TINY_SAMPLE_DATA = """\
output: data/sample
max_bytes: 200000
max_file_bytes: 100000
sources: [stdlib]
"""
TINY_TOKENIZE = """\
input: data/sample
output: data/shards/demo
near_dedup: data/dedup/demo
shard_tokens: 1000000
val_fraction: 0.1
workers: 1
"""
TINY_DEDUP = """\
input: data/sample
output: data/dedup/demo
workers: 1
"""
TINY_TRAIN = """\
data: data/shards/demo
out_dir: out/demo
n_layer: 1
n_head: 2
n_embd: 32
block_size: 32
vocab_size: 50304
micro_batch: 4
grad_accum: 1
smoke_steps: 5
smoke_min_drop: 0.1
lr: 3.0e-3
max_iters: 20
warmup_iters: 2
eval_iters: 2
device: cpu
compile: false
dtype: float32
"""


def stage_calls(r: subprocess.CompletedProcess[str]) -> list[str]:
    """The stages a `make` run started, in order."""
    return [
        ln.split(" -m pipeline ")[1].split()[0]
        for ln in r.stdout.splitlines()
        if " -m pipeline " in ln
    ]


def mtimes(box: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (box / ".stamps").iterdir()}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/sample-data.yaml").write_text(TINY_SAMPLE_DATA)
    (tmp_path / "configs/demo-tokenize.yaml").write_text(TINY_TOKENIZE)
    (tmp_path / "configs/demo-dedup.yaml").write_text(TINY_DEDUP)
    (tmp_path / "configs/demo.yaml").write_text(TINY_TRAIN)
    return tmp_path


@pytest.mark.slow
def test_stamps_second_run_noop_and_changes_rerun_that_stage_and_later(tiny: Path) -> None:
    go = ("RUN=local", "CONFIG=configs/demo.yaml")
    first = make(tiny, *go, "smoke")
    assert first.returncode == 0, first.stderr
    assert stage_calls(first) == ["sample-data", "dedup", "tokenize", "smoke"]
    assert (tiny / "out/demo/smoke.ok").is_file()
    before = mtimes(tiny)

    # a second run does nothing and says so
    again = make(tiny, *go, "smoke")
    assert again.returncode == 0, again.stderr
    assert stage_calls(again) == []
    assert "smoke: up to date" in again.stdout
    assert mtimes(tiny) == before
    assert make(tiny, "-q", *go, ".stamps/smoke@configs_demo.yaml").returncode == 0

    # a train config edit re-runs smoke only
    with (tiny / "configs/demo.yaml").open("a") as f:
        f.write("seed: 7\n")
    assert stage_calls(make(tiny, "-n", *go, "smoke")) == ["smoke"]
    # ARGS count as config: `make -n` shows it would re-run, and records nothing
    dry = make(tiny, "-n", *go, "smoke", "ARGS=lr=1e-3")
    assert next(ln for ln in dry.stdout.splitlines() if " -m pipeline smoke" in ln).endswith(
        "lr=1e-3"
    )
    assert (tiny / ".stamps/smoke@configs_demo.yaml.args").read_text().strip() == ""

    # a real tokenize change re-runs tokenize, which writes new shards, then smoke;
    # sample-data, before it, stays as it is
    cfg = tiny / "configs/demo-tokenize.yaml"
    cfg.write_text(
        TINY_TOKENIZE.replace("val_fraction: 0.1", "val_fraction: 0.2") + "force: true\n"
    )
    changed = make(tiny, *go, "smoke")
    assert changed.returncode == 0, changed.stderr
    assert stage_calls(changed) == ["tokenize", "smoke"]
    assert (
        mtimes(tiny)["sample-data@configs_sample-data.yaml"]
        == before["sample-data@configs_sample-data.yaml"]
    )

    # an output deleted by hand makes its stamp stale
    (tiny / "out/demo/smoke.ok").unlink()
    assert stage_calls(make(tiny, "-n", *go, "smoke")) == ["smoke"]

    # a dedup change re-runs dedup, then tokenize (a new decision) and smoke
    with (tiny / "configs/demo-dedup.yaml").open("a") as f:
        f.write("threshold: 0.8\nforce: true\n")
    assert stage_calls(make(tiny, "-n", *go, "smoke")) == ["dedup", "tokenize", "smoke"]

    # the first stage's config edited: every stage after it would re-run too
    with (tiny / "configs/sample-data.yaml").open("a") as f:
        f.write("# edited\n")
    assert stage_calls(make(tiny, "-n", *go, "smoke")) == [
        "sample-data",
        "dedup",
        "tokenize",
        "smoke",
    ]


@pytest.mark.slow
def test_make_tokenize_reads_every_source_from_a_fresh_checkout(box: Path) -> None:
    """`make tokenize ARGS="input=..."` with the shipped configs (near-dedup first) on The
    Stack's parquet, JSON Lines and a folder of files: each accounted for, on the host."""
    from tests.pipeline.corpus.test_sources import stack_parquet, write_jsonl
    from tests.pipeline.tokenize.tokenize_fixtures import corpus

    docs = corpus(40)
    stack_parquet(box / "data/st/a.parquet", docs)
    write_jsonl(box / "data/j/a.jsonl.gz", docs)
    for i, d in enumerate(docs):
        (box / "data/tree" / d["repo_name"]).mkdir(parents=True, exist_ok=True)
        (box / "data/tree" / d["repo_name"] / f"f{i}.py").write_text(d["code"])
    limits = "workers=1 max_rss_gb=64 min_available_gb=0 shard_tokens=5000"
    for name, extra in (("st", "schema=the-stack"), ("j", ""), ("tree", "schema=files")):
        where = f"input=data/{name} output=data/shards/{name} near_dedup=data/dedup/{name}"
        args = f"ARGS={where} {extra} {limits}"
        first = make(box, "RUN=local", "tokenize", args)
        assert first.returncode == 0, first.stderr
        assert stage_calls(first) == ["dedup", "tokenize"], name
        m = json.loads((box / f"data/shards/{name}/manifest.json").read_text())
        c = m["counts"]
        assert m["complete"] and c["read"] == len(docs), name
        assert c["read"] == c["tokenized"] + sum(c["skipped"].values())
        assert json.loads((box / f"data/dedup/{name}/dedup.json").read_text())["complete"]
        stamps = {p.name: p.stat().st_mtime_ns for p in (box / ".stamps").glob("*.yaml")}
        again = make(box, "RUN=local", "tokenize", args)
        assert again.returncode == 0, again.stderr
        if extra == "schema=files":  # the stages look at the files themselves
            assert stage_calls(again) == ["dedup", "tokenize"]
            assert again.stdout.count("up to date") >= 2, again.stdout
            # and, having written nothing, leave the stamps (smoke after them stays done)
            assert {
                p.name: p.stat().st_mtime_ns for p in (box / ".stamps").glob("*.yaml")
            } == stamps
        else:
            assert stage_calls(again) == [], name
    # an input file changed: make sees it (a JSON Lines file is a prerequisite)
    (box / "data/j/a.jsonl.gz").touch()
    stale = make(
        box,
        "-n",
        "RUN=local",
        "tokenize",
        f"ARGS=input=data/j output=data/shards/j near_dedup=data/dedup/j {limits}",
    )
    assert stage_calls(stale) == ["dedup", "tokenize"]
    # and `make dedup` on its own takes the same input
    alone = make(
        box,
        "RUN=local",
        "dedup",
        "ARGS=input=data/tree schema=files output=data/dedup/tree workers=1 max_rss_gb=64 min_available_gb=0",
    )
    assert alone.returncode == 0 and "up to date" in alone.stdout, alone.stderr


def test_overrides_after_config_reach_the_stage(tmp_path: Path) -> None:
    """`python -m pipeline STAGE --config FILE key=value`, the form every make target uses."""
    cfg = tmp_path / "sample-data.yaml"
    cfg.write_text(f"output: {tmp_path / 'from-file'}\nmax_bytes: 20000\nsources: [stdlib]\n")
    out = tmp_path / "from-args"
    assert main(["sample-data", "--config", str(cfg), f"output={out}", "max_bytes=20000"]) == 0
    assert list(out.glob("*.parquet"))
    assert not (tmp_path / "from-file").exists()


def test_up_runs_smoke_then_compose_with_the_users_ids_and_memory(box: Path) -> None:
    r = make(box, "-n", "RUN=docker", "MEM=5g", "up")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    smoke = next(i for i, ln in enumerate(lines) if ln.startswith("docker run") and " smoke " in ln)
    up = next(i for i, ln in enumerate(lines) if "compose" in ln and ln.endswith("up -d trainer"))
    assert smoke < up  # the trainer refuses to start without smoke.ok
    words = shlex.split(lines[up])
    assert words[0] == "env"  # bash refuses `UID=... cmd`: UID is read-only there
    env = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
    assert env["UID"] == str(os.getuid()) and env["GID"] == str(os.getgid())
    # the same settings, through the engine-free compose binary, give the trainer's limits
    compose = Path(sys.executable).parent / "docker-compose"
    got = subprocess.run(
        [str(compose), "-f", str(REPO / "compose.yaml"), "config", "--format", "json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    trainer = json.loads(got.stdout)["services"]["trainer"]
    assert trainer["user"] == f"{os.getuid()}:{os.getgid()}"
    assert int(trainer["mem_limit"]) == int(trainer["memswap_limit"]) == 5 * 2**30


# The keys the Makefile reads from a config with its sed reader (yaml_get).
MAKE_READS = ("output", "input", "data", "out_dir", "schema", "near_dedup")


def test_makes_yaml_reader_agrees_with_yaml_on_every_shipped_config(box: Path) -> None:
    """docker mode reads config values without Python (only make and docker on the host):
    for every key it reads, its sed reader must give what yaml.safe_load gives."""
    pairs = [
        (cfg, key)
        for cfg in sorted((box / "configs").glob("*.yaml"))
        for key in MAKE_READS
        if key in (yaml.safe_load(cfg.read_text()) or {})
    ]
    assert len(pairs) >= 10
    probe = box / "probe.mk"  # read after the Makefile, so its yaml_get is defined
    probe.write_text(
        "".join(f"$(info {c.name} {k}=[$(call yaml_get,configs/{c.name},{k})])\n" for c, k in pairs)
    )
    done = make(box, "-n", "-f", str(probe), "help")
    assert done.returncode == 0, done.stderr
    for cfg, key in pairs:
        value = yaml.safe_load(cfg.read_text())[key]
        assert f"{cfg.name} {key}=[{'' if value is None else value}]" in done.stdout, (cfg, key)
