"""A file's language from its name: github-code's language names, by extension.

The reading layer uses it where the input gives no language (a folder of files, a
parquet or JSON Lines file without a language column): the per-language accounting
and the `languages` filter then see the same names github-code uses. The built-in
sample (pipeline/sample_data/) labels its files with it too.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.corpus.batches import UNKNOWN_LANGUAGE

# github-code's language names and the extensions its loader maps to them.
# `.pyi` stubs are Python syntax, so they count as Python here too.
_LANGUAGES: dict[str, tuple[str, ...]] = {
    "Assembly": (".asm",),
    "Batchfile": (".bat", ".cmd"),
    "C": (".c", ".h"),
    "C#": (".cs",),
    "C++": (".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".cxx", ".hxx"),
    "CMake": (".cmake",),
    "CSS": (".css",),
    "FORTRAN": (".f90", ".f", ".f03", ".f08", ".f77", ".f95", ".for", ".fpp"),
    "GO": (".go",),
    "Haskell": (".hs",),
    "HTML": (".html", ".htm"),
    "Java": (".java",),
    "JavaScript": (".js",),
    "Julia": (".jl",),
    "Lua": (".lua",),
    "Markdown": (".md", ".markdown"),
    "PHP": (".php",),
    "Perl": (".pl", ".pm"),
    "PowerShell": (".ps1", ".psd1", ".psm1"),
    "Python": (".py", ".pyi"),
    "Ruby": (".rb",),
    "Rust": (".rs",),
    "SQL": (".sql",),
    "Scala": (".scala",),
    "Shell": (".sh", ".bash", ".zsh"),
    "TeX": (".tex",),
    "TypeScript": (".ts", ".tsx"),
    "Visual Basic": (".vb",),
}
EXTENSIONS = {ext: lang for lang, exts in _LANGUAGES.items() for ext in exts}
FILENAMES = {"Makefile": "Makefile", "CMakeLists.txt": "CMake", "Dockerfile": "Dockerfile"}


def language_of(name: str) -> str | None:
    """github-code's language of a file called `name` (a path is fine), or None."""
    base = os.path.basename(name)
    if base in FILENAMES:
        return FILENAMES[base]
    ext = os.path.splitext(base)[1]
    return EXTENSIONS.get(ext) or EXTENSIONS.get(ext.lower())


def codes_of(
    values: list[str | None], wanted: tuple[str, ...]
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray | None]:
    """Per-row codes into the returned names (None is `unknown`, the last name), and the
    `languages` filter's keep mask (None: no filter)."""
    names: dict[str, int] = {}
    codes = np.fromiter(
        (names.setdefault(v, len(names)) if v is not None else -1 for v in values),
        np.int32,
        len(values),
    )
    codes[codes < 0] = len(names)
    keep = None
    if wanted:
        chosen = set(wanted)
        keep = np.fromiter((v in chosen for v in values), bool, len(values))
    return codes, (*names, UNKNOWN_LANGUAGE), keep


def from_paths(paths: list[bytes | None]) -> list[str | None]:
    """The language of each path by its extension (None where unknown or no path)."""
    return [language_of(p.decode("utf-8", "replace")) if p is not None else None for p in paths]
