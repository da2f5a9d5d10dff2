"""The tokenizers, offline: GPT-2's BPE (`gpt2`) and Codex's (`p50k`). The one module
that owns token ids.

`gpt2` is GPT-2's byte-level BPE (r50k): 50257 ids, `<|endoftext|>` = 50256.
`p50k` is OpenAI's p50k_base, the tokenizer of Codex: the same 50257 ids, the same
split pattern, plus 24 tokens for runs of 2 to 25 spaces at 50257-50280 (50281 ids).
Indentation is most of what those runs are, so Python costs about a third fewer
tokens (docs/benchmarks.md).

Both are built from local ranks files (base64 token, rank per line) with tiktoken's
own split pattern, so nothing is downloaded at run time. `make setup` fetches
`gpt2.tiktoken` once from the openai-whisper sdist on PyPI (it ships as
`whisper/assets/gpt2.tiktoken`) and checks its sha256; `p50k_base.tiktoken` is
that file with the 24 space-run lines appended, and its sha256 is the one tiktoken
itself expects for p50k_base, so it is checked too.

Each tokenizer has four fill-in-the-middle sentinels just above its vocabulary
(StarCoder's names, which llama.cpp, Continue and Tabby know): gpt2's at
50257-50260, p50k's at 50281-50284 (prefix, middle, suffix: the order of OpenAI's
p50k_edit; then pad). They sit on rows of the padded 50304-row vocabulary.
Shards never hold them: tokenize encodes a document as plain text, so a file
that spells "<fim_prefix>" stays text; the loader (model/fim.py) and prompts put
them in.

Everything after tokenize takes its tokenizer from the shards' manifest or the
checkpoint's config (`Tokenizer.record`, `from_record`), never from a constant.

    python -m model.tokenizer fetch     # what `make setup` runs
    python -m model.tokenizer check     # encodes "Hello world" with both
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tiktoken

from model.atomic import write_atomically
from model.errors import InputError

EOT = 50256  # <|endoftext|> in both tokenizers, GPT-2's one special id
DEFAULT = "gpt2"  # a manifest or checkpoint that names no tokenizer predates the field: GPT-2's
EOT_TEXT = "<|endoftext|>"
FIM_PREFIX_TEXT, FIM_MIDDLE_TEXT = "<fim_prefix>", "<fim_middle>"
FIM_SUFFIX_TEXT, FIM_PAD_TEXT = "<fim_suffix>", "<fim_pad>"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
# tiktoken's r50k/gpt2 pre-tokenizer pattern (tiktoken_ext/openai_public.py); p50k's too.
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ASSETS = Path(__file__).resolve().parent / "assets"
SPACE_RUNS = range(2, 26)  # p50k's tokens for 2..25 spaces, at ids 50255 + n


@dataclass(frozen=True)
class Spec:
    """What names one tokenizer: its ranks file and hash, its number of ids."""

    name: str
    file: str  # the ranks file's name in model/assets/
    env: str  # the variable that points at another copy of it
    sha256: str
    n_vocab: int  # ids the BPE and <|endoftext|> can produce; the sentinels follow


SPECS = {
    "gpt2": Spec(
        "gpt2",
        "gpt2.tiktoken",
        "CODEGPT_GPT2_RANKS",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        50257,  # 50000 merges + 256 bytes + <|endoftext|>
    ),
    "p50k": Spec(
        "p50k",
        "p50k_base.tiktoken",
        "CODEGPT_P50K_RANKS",
        # tiktoken's expected hash for p50k_base.tiktoken (tiktoken_ext/openai_public.py)
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        50281,  # GPT-2's 50257 + 24 runs of spaces
    ),
}
NAMES = tuple(SPECS)
Name = Literal["gpt2", "p50k"]  # a config key's type (tokenize's `tokenizer:`)


@dataclass(frozen=True)
class Tokenizer:
    """One tokenizer's ids and its tiktoken Encoding (`get(name)` builds it once)."""

    name: str
    n_vocab: int  # ids a document's text can become, <|endoftext|> included
    eot: int
    fim_prefix: int
    fim_middle: int
    fim_suffix: int
    fim_pad: int
    sha256: str
    encoding: tiktoken.Encoding = field(compare=False, repr=False)

    @property
    def n_ids(self) -> int:
        """Every id the encoding can produce: the vocabulary and the sentinels."""
        return self.fim_pad + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        """Name -> id, as the manifest records them."""
        return _specials(self.n_vocab)

    @property
    def fim_stops(self) -> frozenset[int]:
        """The ids that end a generated middle: end of text or any sentinel."""
        return frozenset(self.special_tokens.values())

    def record(self) -> dict[str, Any]:
        """What a manifest (and so every later stage) knows the tokenizer by."""
        return {
            "name": self.name,
            "vocab_sha256": self.sha256,
            "n_vocab": self.n_vocab,
            "special_tokens": self.special_tokens,
        }

    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids; `<|endoftext|>` or `<fim_prefix>` inside source code is
        plain text here (what tokenize uses for every document)."""
        return self.encoding.encode_ordinary(text)

    def encode_with_specials(self, text: str) -> list[int]:
        """Text -> ids where the special tokens written as text (`<fim_prefix>`, ...,
        `<|endoftext|>`) are their ids: for prompts that template FIM into one string, as
        Continue and Tabby do. Never for a training document."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; a special id decodes to its name (`<fim_middle>`)."""
        return self.encoding.decode(ids)

    def token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)


def _specials(n_vocab: int) -> dict[str, int]:
    """<|endoftext|> at 50256 (both), the four sentinels just above the vocabulary."""
    names = (FIM_PREFIX_TEXT, FIM_MIDDLE_TEXT, FIM_SUFFIX_TEXT, FIM_PAD_TEXT)
    return {EOT_TEXT: EOT, **{t: n_vocab + i for i, t in enumerate(names)}}


def spec(name: str, where: str = "tokenizer") -> Spec:
    if name not in SPECS:
        raise InputError(
            f"{where}: tokenizer {name!r} is not one this code knows ({', '.join(NAMES)}); "
            "tokenize the data again with one of those"
        )
    return SPECS[name]


def ranks_path(name: str = DEFAULT) -> Path:
    """`$CODEGPT_GPT2_RANKS` / `$CODEGPT_P50K_RANKS` if set, else the copy `make setup`
    put beside this module."""
    s = spec(name)
    env = os.environ.get(s.env)
    return Path(env) if env else ASSETS / s.file


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def get(name: str = DEFAULT) -> Tokenizer:
    """The tokenizer called `name`, its ranks file checked (built once per process)."""
    s = spec(name)
    path = ranks_path(name)
    if not path.is_file():
        raise InputError(
            f"{name} vocabulary {path} is missing; run `make setup` (or set {s.env} to a "
            f"{s.file} file)"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != s.sha256:
        raise InputError(
            f"{name} vocabulary {path} has sha256 {digest[:12]}..., expected "
            f"{s.sha256[:12]}... ({name}'s own); delete it and run `make setup` again"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    base = s.n_vocab
    enc = tiktoken.Encoding(
        name=name,
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=_specials(base),
        explicit_n_vocab=base + 4,
    )
    return Tokenizer(name, base, EOT, base, base + 1, base + 2, base + 3, s.sha256, enc)


def check_record(record: dict[str, Any] | None, where: str | Path) -> str:
    """The name of the tokenizer a manifest's record describes, checked against this
    code's (no ranks file read): another vocabulary file or other special ids are one
    line naming `where` and the fix. A record without a name predates the field: gpt2.

    A name this code does not know, with its `n_vocab`, is a foreign token stream (ids
    made elsewhere): it can be trained on, without FIM; nothing here can decode it."""
    record = record or {}
    name = str(record.get("name", DEFAULT))
    if name not in SPECS and isinstance(record.get("n_vocab"), int):
        return name
    s = spec(name, str(where))
    had = record.get("vocab_sha256")
    if had is not None and had != s.sha256:
        raise InputError(
            f"{where}: the shards were made with another {name} vocabulary file "
            f"(sha256 {str(had)[:12]}..., this code's is {s.sha256[:12]}...); tokenize again "
            "with this vocabulary"
        )
    n_vocab = record.get("n_vocab")
    if n_vocab is not None and n_vocab != s.n_vocab:
        raise InputError(
            f"{where}: tokenizer {name} with {n_vocab} ids, but this code's {name} has "
            f"{s.n_vocab}; tokenize again with this code (force=true)"
        )
    specials = record.get("special_tokens")
    want = _specials(s.n_vocab)
    if specials is not None and specials != want:
        # (a manifest without the record predates it: the same encoder, no sentinel in it)
        raise InputError(
            f"{where}: the shards were made with other special tokens ({specials}; this code's "
            f"are {want}); tokenize again with this code (force=true)"
        )
    return name


def n_vocab_of(record: dict[str, Any] | None, where: str | Path) -> int:
    """The ids a checked record's tokens can take (a foreign stream's own count)."""
    name = check_record(record, where)
    return SPECS[name].n_vocab if name in SPECS else int((record or {})["n_vocab"])


def from_record(record: dict[str, Any] | None, where: str | Path) -> Tokenizer:
    """The tokenizer a manifest's record names, checked (`check_record`) and built."""
    return get(check_record(record, where))


# --- make setup -----------------------------------------------------------------


def p50k_ranks(gpt2: bytes) -> bytes:
    """p50k_base.tiktoken's bytes: GPT-2's ranks file with the space runs appended."""
    runs = b"".join(
        base64.b64encode(b" " * n) + b" " + str(50255 + n).encode() + b"\n" for n in SPACE_RUNS
    )
    return gpt2 + runs


def _check(name: str, data: bytes, origin: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SPECS[name].sha256:
        raise InputError(
            f"{origin}: {SPECS[name].file} has sha256 {digest}, expected {SPECS[name].sha256}"
        )
    return data


def _download_gpt2() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-q",
                "-d",
                tmp,
                WHISPER_SDIST,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(WHISPER_MEMBER))
            fobj = tar.extractfile(member)
            assert fobj is not None
            return _check("gpt2", fobj.read(), WHISPER_SDIST)


def fetch() -> list[Path]:
    """Both ranks files, checked, each written atomically: gpt2's downloaded (the whisper
    sdist, with pip) unless a good copy is there, p50k's made from it."""
    gpt2, p50k = ranks_path("gpt2"), ranks_path("p50k")
    if gpt2.is_file() and _sha256(gpt2) == SPECS["gpt2"].sha256:
        data = gpt2.read_bytes()
    else:
        data = _download_gpt2()
        gpt2.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(gpt2, lambda f: f.write(data))
    if not (p50k.is_file() and _sha256(p50k) == SPECS["p50k"].sha256):
        made = _check("p50k", p50k_ranks(data), f"{gpt2} + {len(SPACE_RUNS)} space runs")
        p50k.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(p50k, lambda f: f.write(made))
    return [gpt2, p50k]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["fetch"]:
        for path in fetch():
            print(f"vocabulary at {path}")
        return 0
    if args == ["check"]:
        ok = True
        for name in NAMES:
            ids = get(name).encode("Hello world\n    pass")
            print(f"{name}: 'Hello world\\n    pass' -> {ids}")
            ok &= ids[:2] == [15496, 995]
        return 0 if ok else 1
    print("usage: python -m model.tokenizer fetch|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
