"""A training run folder's small files: `config.yaml` and `smoke.ok`, one reader and one writer each.

The other files of `out/<run>/` have their own owners: `metrics.jsonl` is
model/metrics.py's and the checkpoints are model/checkpoint.py's. `load_run`
gathers what the report and the plot show (the metrics and the config), so
neither reads a file itself.

- `config.yaml`: the resolved TrainConfig the run uses, written by train.
- `smoke.ok`: JSON written by the smoke stage when its checks pass: the
  fingerprint of the keys smoke proved (`model.config.fingerprint(cfg,
  "smoke")`), the first and last loss, the val loss and the step time.
  `make train` refuses to start without a stamp for the same keys.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model import config as configlib
from model.atomic import write_text
from model.errors import ConfigError, InputError, StateError
from model.metrics import FILE as METRICS_FILE
from model.metrics import read_metrics

if TYPE_CHECKING:
    from model.train_config import TrainConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
SMOKE_FILE = "smoke.ok"
SKIP_SMOKE_ENV = "CODEGPT_SKIP_SMOKE_CHECK"  # =1: train without a smoke.ok (tests, experts)


# --------------------------------------------------------------- config.yaml


def write_config(cfg: TrainConfig, run_dir: str | Path) -> Path:
    """out/<run>/config.yaml: the resolved config, written atomically."""
    return write_text(Path(run_dir) / CONFIG_FILE, configlib.dump_yaml(cfg))


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.yaml as plain data; {} when the run has none yet."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return configlib.read_yaml(path)
    except ConfigError as e:  # the run's own file, not a config the user passed
        raise InputError(f"{path}: unreadable ({e}); delete it and rerun `make train`") from None


# --------------------------------------------------------------- smoke.ok


@dataclass(frozen=True)
class SmokeStamp:
    config_hash: str | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    val_loss: float | None = None
    ms_per_step: float | None = None
    tokens_per_s: float | None = None
    readable: bool = field(default=True, compare=False)


def smoke_fingerprint(cfg: TrainConfig) -> str:
    return configlib.fingerprint(cfg, "smoke")


def write_smoke_stamp(run_dir: str | Path, stamp: SmokeStamp) -> Path:
    body = {k: v for k, v in asdict(stamp).items() if k != "readable"}
    return write_text(Path(run_dir) / SMOKE_FILE, json.dumps(body, indent=1) + "\n")


def read_smoke_stamp(run_dir: str | Path) -> SmokeStamp | None:
    """The stamp; None when there is none; `readable=False` when it is damaged."""
    path = Path(run_dir) / SMOKE_FILE
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        return SmokeStamp(
            config_hash=_typed(body.get("config_hash"), str),
            first_loss=_typed(body.get("first_loss"), float),
            last_loss=_typed(body.get("last_loss"), float),
            val_loss=_typed(body.get("val_loss"), float),
            ms_per_step=_typed(body.get("ms_per_step"), float),
            tokens_per_s=_typed(body.get("tokens_per_s"), float),
        )
    except (OSError, ValueError, TypeError) as e:
        log.warning("%s is unreadable (%s); rerun `make smoke`", path, e)
        return SmokeStamp(readable=False)


def _typed(value: Any, tp: type) -> Any:
    """`value` if it is a `tp` (an int counts as a float), else None."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value if isinstance(value, tp) else None


def check_smoke_stamp(cfg: TrainConfig) -> None:
    """Raise StateError unless out/<run>/smoke.ok exists for this config's smoke keys.

    Skipped when CODEGPT_SKIP_SMOKE_CHECK=1.
    """
    if os.environ.get(SKIP_SMOKE_ENV) == "1":
        return
    path = Path(cfg.out_dir) / SMOKE_FILE
    hint = f"run `make smoke` first (or set {SKIP_SMOKE_ENV}=1 to skip this check)"
    stamp = read_smoke_stamp(cfg.out_dir)
    if stamp is None:
        raise StateError(f"{path} not found: the smoke test has not passed for this run; {hint}")
    if not stamp.readable:
        raise StateError(f"{path} is unreadable; {hint}")
    if stamp.config_hash != smoke_fingerprint(cfg):
        keys = ", ".join(configlib.keys(type(cfg), "smoke"))
        raise StateError(f"{path} is for a different config (one of {keys} changed); {hint}")


# --------------------------------------------------------------- what report and plot read


@dataclass
class RunData:
    name: str
    train: list[dict[str, Any]]  # logged steps: step, loss, lr, tokens, ms, tokens_per_s, ...
    evals: list[dict[str, Any]]  # step, val_loss, tokens
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml; {} if absent


def load_run(run_dir: str | Path) -> RunData:
    folder = Path(run_dir)
    if not (folder / METRICS_FILE).is_file():
        raise InputError(
            f"{folder / METRICS_FILE} not found; train first (`make train`) or set out_dir="
        )
    recs = read_metrics(folder)
    return RunData(
        name=folder.resolve().name,
        train=[r for r in recs if "loss" in r],
        evals=[r for r in recs if "val_loss" in r],
        config=read_config(folder),
    )
