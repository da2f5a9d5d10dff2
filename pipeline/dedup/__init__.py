"""The near-dedup stage's room: `make dedup` / `python -m pipeline dedup`, before tokenize.

    stage.py     the stage: its config, the rerun check, the two phases, `run`
    worker.py    what one worker does with one batch: the rules, then MinHash band keys
    minhash.py   shingles, MinHash signatures and LSH band keys, in numpy
    buckets.py   the band keys on disk (partitioned, append-only) and the clustering
    decision.py  the stage's output (dedup.json, near_duplicates.npy): its one writer and reader

It reads the input through the tokenize stage's source and pool (pipeline/tokenize/)
and applies the same rules, so it clusters exactly the documents tokenize would keep.
"""
