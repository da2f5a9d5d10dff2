"""The tokenize stage's document accounting: every row read is counted once, by its outcome.

`read == tokenized + sum(skipped.values())` holds at every checkpoint. Besides
the totals, per split and per `language` value: the documents, UTF-8 bytes and
tokens that went into the shards (`languages`), and per language the rows each
rule removed (`skipped_by_language`); a null or missing language is `unknown`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model import shards
from pipeline.corpus.batches import SKIP_REASONS, STATUS, BatchInfo, Encoded


def _empty_splits() -> dict[str, dict[str, dict[str, int]]]:
    return {s: {} for s in shards.SPLITS}


@dataclass
class Counts:
    read: int = 0
    tokenized: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    replaced_utf8: int = 0
    text_bytes: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(shards.SPLITS, 0))
    # split -> language -> {"documents", "bytes", "tokens"}
    languages: dict[str, dict[str, dict[str, int]]] = field(default_factory=_empty_splits)
    # language -> reason -> rows
    skipped_by_language: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, batch: BatchInfo, enc: Encoded, upto: int | None = None) -> None:
        """Count rows [0, upto) of one batch."""
        status = enc.status[:upto]
        per = np.bincount(status, minlength=len(STATUS))
        self.read += len(status)
        self.tokenized += int(per[0])
        for i, reason in enumerate(SKIP_REASONS, start=1):
            self.skipped[reason] += int(per[i])
        self.replaced_utf8 += int(enc.replaced[:upto].sum())
        self.text_bytes += int(enc.nbytes[:upto].sum())
        ntok, split = enc.ntok[:upto], enc.split[:upto]
        for s, name in enumerate(shards.SPLITS):
            self.tokens[name] += int(ntok[split == s].sum())
        self._add_languages(batch, enc, len(status))

    def _add_languages(self, batch: BatchInfo, enc: Encoded, n: int) -> None:
        lang, status, names = batch.lang[:n], enc.status[:n], batch.lang_names
        kept = status == 0
        for s, split in enumerate(shards.SPLITS):
            sel = kept & (enc.split[:n] == s)
            docs = np.bincount(lang[sel], minlength=len(names))
            nbytes = np.bincount(lang[sel], weights=enc.nbytes[:n][sel], minlength=len(names))
            ntok = np.bincount(lang[sel], weights=enc.ntok[:n][sel], minlength=len(names))
            for code in np.flatnonzero(docs):
                d = self.languages[split].setdefault(
                    names[code], {"documents": 0, "bytes": 0, "tokens": 0}
                )
                d["documents"] += int(docs[code])
                d["bytes"] += int(nbytes[code])
                d["tokens"] += int(ntok[code])
        skipped = ~kept
        pairs = lang[skipped].astype(np.int64) * len(STATUS) + status[skipped]
        values, counts = np.unique(pairs, return_counts=True)
        for pair, count in zip(values.tolist(), counts.tolist(), strict=True):
            lang_code, reason = divmod(pair, len(STATUS))
            by_reason = self.skipped_by_language.setdefault(names[lang_code], {})
            by_reason[STATUS[reason]] = by_reason.get(STATUS[reason], 0) + count

    def copy(self) -> Counts:
        return Counts(**copy.deepcopy(self.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "tokenized": self.tokenized,
            "skipped": dict(self.skipped),
            "replaced_utf8": self.replaced_utf8,
            "text_bytes": self.text_bytes,
            "tokens": dict(self.tokens),
            "languages": self.languages,
            "skipped_by_language": self.skipped_by_language,
        }

    def balanced(self) -> bool:
        return self.read == self.tokenized + sum(self.skipped.values())
