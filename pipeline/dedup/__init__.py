"""The near-dedup stage's room: `make dedup` / `python -m pipeline dedup`, before tokenize.

    stage.py     the stage: its config, the rerun check, the two phases, `run`
    worker.py    what one worker does with one batch: the rules, then MinHash band keys
    minhash.py   shingles, MinHash signatures and LSH band keys, in numpy
    buckets.py   the band keys on disk (partitioned, append-only) and the clustering

It reads the input through the reading layer and pool that tokenize shares
(pipeline/corpus/) and applies the same rules, so it clusters exactly the documents
tokenize would keep; its output is pipeline/corpus/decision.py's format, which tokenize
reads. It imports nothing from pipeline/tokenize/.
"""
