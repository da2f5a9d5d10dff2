"""The data contract: what a shard folder must be before the trainer reads a window.

Checked (`open_dataset`) before any step, each a one-line
error naming the file and the fix: the folder's manifest.json exists and says
`complete: true` (`allow_partial` trains on the listed shards and says so);
its tokenizer fits the model's vocabulary; and every batch's token ids are
below `vocab_size` (checked on the host before the copy, naming the shard
and the offset).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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

KNOWN_VOCABS = {tokenizer.NAME: tokenizer.VOCAB_SIZE}  # tokenizer name -> number of ids


@dataclass(frozen=True)
class Dataset:
    folder: Path
    shards: dict[str, list[Path]]  # split -> its shard files, in order
    complete: bool  # the manifest says the whole input is in the shards
    manifest: Manifest | None = None

    def val_index(self) -> np.ndarray | None:
        """The val split's document index (language and bytes of each val document)."""
        return read_doc_index(self.folder, self.manifest) if self.manifest else None


def open_dataset(folder: str | Path, vocab_size: int, allow_partial: bool = False) -> Dataset:
    """The shard folder, checked against its manifest and the model's vocabulary."""
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
        return Dataset(folder, {s: list_shards(folder, s) for s in SPLITS}, complete=False)
    _check_tokenizer(folder, manifest, vocab_size)
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
    return Dataset(folder, shards, complete, manifest)


def _check_tokenizer(folder: Path, manifest: Manifest, vocab_size: int) -> None:
    tok = manifest.tokenizer
    name = tok.get("name")
    where = folder / MANIFEST
    if name == tokenizer.NAME and tok.get("vocab_sha256") != tokenizer.RANKS_SHA256:
        raise InputError(
            f"{where}: the shards were made with another {name} vocabulary file "
            f"(sha256 {str(tok.get('vocab_sha256'))[:12]}..., this code's is "
            f"{tokenizer.RANKS_SHA256[:12]}...); tokenize again with this vocabulary"
        )
    specials = tok.get("special_tokens")
    if name == tokenizer.NAME and specials is not None and specials != tokenizer.SPECIAL_TOKENS:
        # (a manifest without the record predates it: the same encoder, no sentinel in it)
        raise InputError(
            f"{where}: the shards were made with other special tokens ({specials}; this code's "
            f"are {tokenizer.SPECIAL_TOKENS}); tokenize again with this code (force=true)"
        )
    n_vocab = tok.get("n_vocab", KNOWN_VOCABS.get(str(name)))
    if not isinstance(n_vocab, int):
        raise InputError(
            f"{where}: tokenizer {name!r} is not one this code knows; tokenize the data with "
            "`make tokenize` (GPT-2)"
        )
    if n_vocab > vocab_size:
        raise InputError(
            f"{where}: tokenizer {name!r} has {n_vocab:,} ids but the model has vocab_size="
            f"{vocab_size:,} rows; set vocab_size >= {n_vocab} (50304 for GPT-2)"
        )


def fim_rates(cfg: TrainConfig, data: Dataset) -> fim.Rates | None:
    """The run's FIM rates, or None for fim_rate 0; FIM needs text to cut, so GPT-2 shards."""
    if cfg.fim_rate == 0:
        return None
    tok = (data.manifest.tokenizer if data.manifest else None) or {"name": tokenizer.NAME}
    if tok.get("name") != tokenizer.NAME:
        raise InputError(
            f"{data.folder / MANIFEST}: the shards' tokenizer is {tok.get('name')!r}, but "
            f"fim_rate={cfg.fim_rate} re-encodes text with GPT-2's; set fim_rate=0 or "
            "tokenize with `make tokenize`"
        )
    if cfg.vocab_size <= tokenizer.FIM_PAD:
        raise InputError(
            f"fim_rate={cfg.fim_rate} needs the FIM sentinels' rows (ids up to "
            f"{tokenizer.FIM_PAD}) but vocab_size={cfg.vocab_size}; set fim_rate=0 or "
            "vocab_size=50304"
        )
    return fim.Rates(cfg.fim_rate, cfg.fim_spm_rate)
