"""The tokenize stage's room: parquet files of source code -> GPT-2 token shards + manifest.

    stage.py     the stage: its config, the rerun check, `run`
    source.py    reads parquet files in byte-bounded batches (the main process)
    batches.py   what travels between the reader, the workers and the writer
    worker.py    what one worker process does with one batch: filter, split, encode
    pool.py      the worker pool: batches in, encodings out, in input order
    writer.py    shard buffers, exact resume state, the document accounting
    manifest.py  writes manifest.json and the partial files (model/shards.py reads it)
    progress.py  the progress line and the summary
    watchdog.py  stops the stage cleanly before the machine runs out of memory

Nothing is imported here, so that a worker process importing worker.py pulls
in numpy and tiktoken only (no pyarrow).
"""
