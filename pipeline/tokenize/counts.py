"""The tokenize stage's document accounting: every row read is counted once, by its outcome.

`read == tokenized + sum(skipped.values())` holds at every checkpoint. Besides
the totals, per split and per `language` value: the documents, UTF-8 bytes and
tokens that went into the shards (`languages`), and per language the rows each
rule removed (`skipped_by_language`); a null or missing language is `unknown`.
The record is model/manifest.py's `Counts`; this adds a batch to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from model import manifest
from model.manifest import SPLITS
from pipeline.corpus.batches import SKIP_REASONS, STATUS, BatchInfo, Encoded


@dataclass
class Counts(manifest.Counts):
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    @classmethod
    def of(cls, record: manifest.Counts) -> Counts:
        """A resumed run's counts: the manifest's record, every reason present."""
        counts = cls(**asdict(record))
        counts.skipped = {**dict.fromkeys(SKIP_REASONS, 0), **counts.skipped}
        return counts

    def add(self, batch: BatchInfo, enc: Encoded) -> None:
        """Count the rows of one batch."""
        status = enc.status
        per = np.bincount(status, minlength=len(STATUS))
        self.read += len(status)
        self.tokenized += int(per[0])
        for i, reason in enumerate(SKIP_REASONS, start=1):
            self.skipped[reason] += int(per[i])
        self.replaced_utf8 += int(enc.replaced.sum())
        self.text_bytes += int(enc.nbytes.sum())
        for s, name in enumerate(SPLITS):
            self.tokens[name] += int(enc.ntok[enc.split == s].sum())
        self._add_languages(batch, enc)

    def _add_languages(self, batch: BatchInfo, enc: Encoded) -> None:
        lang, status, names = batch.lang, enc.status, batch.lang_names
        kept = status == 0
        for s, split in enumerate(SPLITS):
            sel = kept & (enc.split == s)
            docs = np.bincount(lang[sel], minlength=len(names))
            nbytes = np.bincount(lang[sel], weights=enc.nbytes[sel], minlength=len(names))
            ntok = np.bincount(lang[sel], weights=enc.ntok[sel], minlength=len(names))
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
