"""The one config mechanism: YAML + key=value -> checked dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from model import config as configlib
from model.errors import ConfigError
from model.train_config import TrainConfig
from tests.conftest import REPO


@dataclass(kw_only=True)
class Toy:
    n: int = 1
    x: float = 0.5
    name: str = "a"
    on: bool = False
    workers: int | str = "auto"
    langs: list[str] = field(default_factory=list)


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = configlib.load(Toy, None, ["n=4", "x=1e-3", "on=true", "workers=2", "langs=[Python, Go]"])
    assert (cfg.n, cfg.x, cfg.on, cfg.workers, cfg.langs) == (4, 1e-3, True, 2, ["Python", "Go"])


def test_int_is_accepted_for_float_and_str_union_keeps_auto():
    cfg = configlib.load(Toy, None, ["x=3", "workers=auto", "langs=Python"])
    assert cfg.x == 3.0 and isinstance(cfg.x, float)
    assert cfg.workers == "auto" and cfg.langs == ["Python"]


def test_unknown_keys_and_wrong_types_fail_once_naming_all(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("n: two\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        configlib.load(Toy, p, ["on=maybe"])
    msg = str(e.value)
    assert "bogus" in msg and "n='two'" in msg and "on='maybe'" in msg and str(p) in msg


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        configlib.load(Toy, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        configlib.load(Toy, bad)


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        configlib.parse_overrides(["lr"])


def test_reference_config_matches_design():
    cfg = configlib.load(TrainConfig, REPO / "configs" / "gpt2-124m.yaml")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (
        12,
        12,
        768,
        1024,
        50304,
    )
    assert cfg.tokens_per_step == 32_768
    assert (cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters) == (6e-4, 6e-5, 2000, 427_000)
    assert cfg.compile is True and cfg.ckpt_interval == 1000


def test_train_config_cross_checks_are_collected():
    with pytest.raises(ConfigError) as e:
        configlib.load(TrainConfig, None, ["n_embd=100", "n_head=3", "dtype=fp8", "min_lr=1"])
    msg = str(e.value)
    assert "n_embd=100" in msg and "dtype='fp8'" in msg and "min_lr=1" in msg


def test_override_text_that_yaml_reads_as_a_mapping_stays_text() -> None:
    got = configlib.parse_overrides(["prompt=def main():", "languages=[Python, Go]", "x=a: b: c"])
    assert got == {"prompt": "def main():", "languages": ["Python", "Go"], "x": "a: b: c"}


def test_unquoted_override_text_is_kept_as_typed_quoted_text_is_yaml() -> None:
    raw = ["prompt=def f(x):\\n    ", "suffix=  y = 1  # why", "q='a # b'", 'd=" pad "']
    got = configlib.parse_overrides(raw)
    assert got == {
        "prompt": "def f(x):\\n    ",
        "suffix": "  y = 1  # why",
        "q": "a # b",
        "d": " pad ",
    }


@dataclass(kw_only=True)
class Tagged(configlib.Config):
    size: int = configlib.option(4, "a size", affects=("output", "model"), ge=1)
    rate: float = configlib.option(0.5, "a rate", affects="output", gt=0, lt=1)
    mode: Literal["fast", "slow"] = configlib.option("fast", "a choice")
    where: str = configlib.option("here", "not tagged")


def test_choices_and_bounds_are_checked_by_the_mechanism_together():
    with pytest.raises(ConfigError) as e:
        configlib.load(Tagged, None, ["size=0", "rate=1.5", "mode=medium"])
    msg = str(e.value)
    assert "mode='medium' must be one of fast, slow" in msg
    assert "size=0 must be >= 1" in msg and "rate=1.5 must be < 1" in msg
    with pytest.raises(ConfigError, match="rate=0.0 must be > 0"):
        Tagged(rate=0.0)  # made directly, not through load: the same checks


def test_tags_name_what_each_key_affects():
    cfg = Tagged(size=8)
    assert configlib.keys(Tagged, "output") == ("size", "rate")
    assert configlib.keys(Tagged, "model") == ("size",)
    assert configlib.values(cfg, "output") == {"size": 8, "rate": 0.5}
    assert configlib.fingerprint(cfg, "output") == configlib.fingerprint(
        Tagged(size=8, where="there", mode="slow"), "output"
    )
    assert configlib.fingerprint(cfg, "output") != configlib.fingerprint(Tagged(), "output")
    assert "a rate" in configlib.describe(Tagged)


def test_each_stage_states_what_shapes_its_output_once():
    from model.trainer import SHAPE_KEYS
    from pipeline.sample_data.stage import SampleDataConfig
    from pipeline.tokenize.stage import TokenizeConfig

    model_keys = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
    assert SHAPE_KEYS == configlib.keys(TrainConfig, "model") == model_keys
    assert configlib.keys(TrainConfig, "smoke") == (
        "data",
        "fim_rate",
        "fim_spm_rate",
        *model_keys,
        "dropout",
        "micro_batch",
        "grad_accum",
        "batch_size",
        "optimizer",
        "dtype",
        "compile",
        "device",
        "loss",
        "loss_chunk",
    )
    rules = (
        "schema",
        "text_column",
        "repo_column",
        "path_column",
        "language_column",
        "languages",
        "max_doc_bytes",
        "max_line_chars",
        "max_mean_line_chars",
        "min_alnum_fraction",
        "drop_generated",
    )
    assert configlib.keys(TokenizeConfig, "rules") == rules  # shared with the dedup stage
    assert configlib.keys(TokenizeConfig, "output") == (
        *rules,
        "shard_tokens",
        "val_fraction",
        "dedup",
        "near_dedup",
    )
    assert "force" not in configlib.keys(SampleDataConfig, "output")
    assert "output" not in configlib.keys(SampleDataConfig, "output")


def test_smoke_fingerprint_is_the_stamp_hash_older_runs_wrote():
    """smoke.ok files written before the tags existed stay valid: same keys, same hash."""
    import hashlib
    import json

    from model.rundir import smoke_fingerprint

    cfg = configlib.load(TrainConfig, REPO / "configs" / "demo.yaml")
    picked = {k: getattr(cfg, k) for k in configlib.keys(TrainConfig, "smoke")}
    old = hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]
    assert smoke_fingerprint(cfg) == old
