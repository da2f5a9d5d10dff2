"""The tokenize stage's room: a corpus of source code -> GPT-2 token shards + manifest.

    stage.py     the stage: its config, the rerun check, `run`
    worker.py    what one worker process does with one batch: filter, split, encode
    writer.py    shard buffers and the manifest record; checkpoints at batch boundaries
    exact.py     exact dedup: the digests seen so far, decided in input order
    counts.py    the accounting: every row read counted once, per reason and per language
    docindex.py  the val shards' document index: the document and language of each token
    manifest.py  the partial files beside manifest.json (model/manifest.py: the record)
    progress.py  the progress line and the summary

It reads its input through pipeline/corpus/ (the reading layer, the worker pool, the
rules, the watchdog), which the dedup stage shares, and reads dedup's decision through
pipeline/corpus/decision.py; it imports nothing from pipeline/dedup/.
Nothing is imported here, so that importing one part pulls in only what it needs.
"""
