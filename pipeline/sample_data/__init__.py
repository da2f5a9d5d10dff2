"""The sample-data stage: a built-in sample of real source code, as github-code parquet.

stage.py    the stage: its config, the rerun check, `run`
sources.py  which files of this machine are candidates (language, license, repository)
parts.py    reading the chosen files and writing part-NNNNN.parquet, atomically
"""
