"""The data stages' shared room: how tokenize and dedup read a corpus, and what they share.

    settings.py    SourceConfig: the input, reading and rule keys tokenize and dedup share
    source.py      the reading layer: the sources, the listing, the survey, a file's batches
    parquet.py     parquet in any schema: footers, schema checks, byte-bounded batches
    jsonl.py       JSON Lines files (.jsonl, .gz, .zst): spans of lines as row groups
    files.py       a folder of source files: the walk (.gitignore, .git, ...), runs of files
    languages.py   a file's language from its extension (github-code's names)
    reading.py     a worker decodes a row group into shared memory; row ranges of it
    batches.py     what travels between the reader, the workers and a stage's writer
    pool.py        the worker pool: row groups and ranges out, results back, in input order
    lifeline.py    a worker process exits when the main process that started it dies
    rules.py       the per-document quality filters and the exact-dedup digest
    watchdog.py    stops a stage cleanly before the machine runs out of memory
    inputs.py      what a stage's output is made from (Made), and the one what-changed check
    appendonly.py  append-only record files whose valid length a state file records
    decision.py    the near-dedup decision and dedup.json's record (DedupState): their one module

Neither stage imports the other's room (tests/test_layout.py checks it): both import
this one, as datatrove's steps share its readers and executors. Nothing is imported
here, so that importing one part pulls in only what it needs (a worker never imports
pyarrow unless it decodes).
"""
