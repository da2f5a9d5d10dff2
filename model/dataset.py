"""The data contract: what a shard folder must be before the trainer reads a window.

Checked (`open_dataset`) before any step, each a one-line
error naming the file and the fix: the folder's manifest.json exists and says
`complete: true` (`allow_partial` trains on the listed shards and says so);
its tokenizer is one this code knows, the run's (`resolve_tokenizer`), and fits the
model's vocabulary; and every batch's token ids are
below `vocab_size` (checked on the host before the copy, naming the shard
and the offset).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model import fim, tokenizer
from model.errors import InputError
from model.manifest import MANIFEST, SPLITS, Manifest, read_manifest
from model.shards import list_shards, read_doc_index

if TYPE_CHECKING:
    from model.train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    folder: Path
    shards: dict[str, list[Path]]  # split -> its shard files, in order
    complete: bool  # the manifest says the whole input is in the shards
    manifest: Manifest | None = None
    tokenizer: str = tokenizer.DEFAULT  # the name the manifest records (model/tokenizer.py)

    def val_index(self) -> np.ndarray | None:
        """The val split's document index (language and bytes of each val document)."""
        return read_doc_index(self.folder, self.manifest) if self.manifest else None


def open_dataset(
    folder: str | Path, vocab_size: int, allow_partial: bool = False, want: str = "auto"
) -> Dataset:
    """The shard folder, checked against its manifest, the model's vocabulary and the
    tokenizer the run was made for (`want`; auto: any)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    fix = (
        "run `make tokenize` to finish it, or pass allow_partial=true to train on the "
        "shards that are there"
    )
    if manifest is None:
        if not allow_partial:
            raise InputError(
                f"{folder / MANIFEST} not found: {folder} is not a finished `make tokenize` "
                f"output; {fix}"
            )
        log.warning(
            "%s has no %s: allow_partial=true, using its shards as they are", folder, MANIFEST
        )
        name = tokenizer.DEFAULT if want == "auto" else want
        return Dataset(folder, {s: list_shards(folder, s) for s in SPLITS}, False, None, name)
    name = _check_tokenizer(folder, manifest, vocab_size, want)
    complete = manifest.complete
    if not complete:
        if not allow_partial:
            raise InputError(
                f"{folder / MANIFEST} says complete: false (tokenize was stopped or is still "
                f"running); {fix}"
            )
        log.warning("%s is incomplete: allow_partial=true, training on the listed shards", folder)
    manifest.listed_but_missing(folder, fix)
    shards = {s: [folder / e.name for e in manifest.shards[s]] for s in SPLITS}
    return Dataset(folder, shards, complete, manifest, name)


def _check_tokenizer(folder: Path, manifest: Manifest, vocab_size: int, want: str) -> str:
    where = folder / MANIFEST
    name = tokenizer.check_record(manifest.tokenizer, where)
    if want not in ("auto", name):
        raise InputError(mixed(where, name, f"this run's tokenizer is {want}"))
    n_vocab = tokenizer.n_vocab_of(manifest.tokenizer, where)
    if n_vocab > vocab_size:
        raise InputError(
            f"{where}: tokenizer {name!r} has {n_vocab:,} ids but the model has vocab_size="
            f"{vocab_size:,} rows; set vocab_size >= {n_vocab} (50304 for gpt2 and p50k)"
        )
    return name


def mixed(where: str | Path, shards: str, other: str) -> str:
    """The one line for shards of one tokenizer met by a run or checkpoint of another."""
    return (
        f"{where}: these shards are {shards} tokens, but {other}; train a new run (another "
        f"out_dir) on them, or tokenize the data again with that tokenizer"
    )


def shard_tokenizer(folder: str | Path) -> str | None:
    """The tokenizer a shard folder's manifest names (checked), None without a manifest."""
    manifest = read_manifest(Path(folder))
    if manifest is None:
        return None
    return tokenizer.check_record(manifest.tokenizer, Path(folder) / MANIFEST)


def resolve_tokenizer(cfg: TrainConfig) -> TrainConfig:
    """`tokenizer: auto` -> the shards' (their manifest's, gpt2 without one); a name the
    shards do not have is one line naming both. Run before any loader or checkpoint."""
    found = shard_tokenizer(cfg.data)
    if cfg.tokenizer == "auto":
        return replace(cfg, tokenizer=found or tokenizer.DEFAULT)
    if found is None and cfg.tokenizer not in tokenizer.NAMES:
        tokenizer.spec(cfg.tokenizer, f"tokenizer={cfg.tokenizer}")  # one line: not known
    if found is not None and found != cfg.tokenizer:
        where = Path(cfg.data) / MANIFEST
        raise InputError(mixed(where, found, f"tokenizer={cfg.tokenizer} was asked for"))
    return cfg


def fim_rates(cfg: TrainConfig, data: Dataset) -> fim.Rates | None:
    """The run's FIM rates, or None for fim_rate 0; the sentinels need their rows."""
    if cfg.fim_rate == 0:
        return None
    name = data.tokenizer
    if name not in tokenizer.NAMES:
        raise InputError(
            f"{data.folder / MANIFEST}: the shards' tokenizer is {name!r}, but "
            f"fim_rate={cfg.fim_rate} re-encodes their text, which this code cannot decode; "
            f"set fim_rate=0 or tokenize with `make tokenize` ({', '.join(tokenizer.NAMES)})"
        )
    pad = tokenizer.get(name).fim_pad
    if cfg.vocab_size <= pad:
        raise InputError(
            f"fim_rate={cfg.fim_rate} needs the FIM sentinels' rows (ids up to {pad} for "
            f"{name}) but vocab_size={cfg.vocab_size}; set fim_rate=0 or "
            "vocab_size=50304"
        )
    return fim.Rates(cfg.fim_rate, cfg.fim_spm_rate)
