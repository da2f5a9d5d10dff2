"""The tokenize stage's room: parquet files of source code -> GPT-2 token shards + manifest.

    stage.py     the stage: its config, the rerun check, `run`
    settings.py  SourceConfig: the input, reading and rule keys tokenize and dedup share
    source.py    parquet footers and schema checks; one row group in byte-bounded batches
    reading.py   a worker decodes a row group into shared memory; row ranges of it
    batches.py   what travels between the reader, the workers and the writer
    pool.py      the worker pool: row groups and ranges out, encodings back, in input order
    lifeline.py  a worker process exits when the main process that started it dies
    worker.py    what one worker process does with one batch: filter, split, encode
    rules.py     the per-document quality filters and the exact-dedup digest
    writer.py    shard buffers and the exact resume state
    exact.py     exact dedup: the digests seen so far, decided in input order
    counts.py    the accounting: every row read counted once, per reason and per language
    docindex.py  the val shards' document index: the document and language of each token
    manifest.py  writes manifest.json and the partial files (model/shards.py reads it)
    progress.py  the progress line and the summary
    watchdog.py  stops the stage cleanly before the machine runs out of memory

Nothing is imported here, so that importing one part pulls in only what it needs
(the workers also read parquet now, so the forkserver preloads pyarrow for them).
"""
