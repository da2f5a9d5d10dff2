"""GPT-2 BPE, offline. The one module that owns the tokenizer.

tiktoken's own `get_encoding("gpt2")` downloads the vocabulary on first use,
which fails on air-gapped boxes. We build the same encoding from a local ranks
file, `gpt2.tiktoken` (base64 token, rank per line), with tiktoken's GPT-2
split pattern and `<|endoftext|>` = 50256. `make setup` fetches that file once
from the openai-whisper sdist on PyPI (which ships it as
`whisper/assets/gpt2.tiktoken`) and checks its sha256; after that nothing is
downloaded at run time.

    python -m model.tokenizer fetch     # what `make setup` runs
    python -m model.tokenizer check     # encodes "Hello world"
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
from pathlib import Path

import tiktoken

from model.atomic import write_atomically
from model.errors import InputError

NAME = "gpt2"
VOCAB_SIZE = 50257  # 50000 merges + 256 bytes + <|endoftext|>
EOT = 50256
EOT_TEXT = "<|endoftext|>"
# Fill-in-the-middle sentinels (StarCoder's names, which llama.cpp, Continue and Tabby
# know), on rows of the padded 50304 vocabulary that GPT-2 never uses. Shards never hold
# them: tokenize encodes a document's text as ordinary text, so a file that spells
# "<fim_prefix>" stays plain text; the loader (model/fim.py) and prompts put them in.
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = 50257, 50258, 50259, 50260
FIM_PREFIX_TEXT, FIM_MIDDLE_TEXT = "<fim_prefix>", "<fim_middle>"
FIM_SUFFIX_TEXT, FIM_PAD_TEXT = "<fim_suffix>", "<fim_pad>"
SPECIAL_TOKENS = {
    EOT_TEXT: EOT,
    FIM_PREFIX_TEXT: FIM_PREFIX,
    FIM_MIDDLE_TEXT: FIM_MIDDLE,
    FIM_SUFFIX_TEXT: FIM_SUFFIX,
    FIM_PAD_TEXT: FIM_PAD,
}
N_IDS = 50261  # every id the encoding can produce: the GPT-2 vocabulary and the sentinels
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
# tiktoken's r50k/gpt2 pre-tokenizer pattern (tiktoken_ext/openai_public.py).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

DEFAULT_RANKS = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"


def ranks_path() -> Path:
    """`$CODEGPT_GPT2_RANKS` if set, else the copy `make setup` put beside this module."""
    env = os.environ.get("CODEGPT_GPT2_RANKS")
    return Path(env) if env else DEFAULT_RANKS


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vocab_hash() -> str:
    """sha256 of the ranks file in use; recorded in manifests."""
    return _sha256(ranks_path())


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding, built from the local ranks file (cached per process)."""
    path = ranks_path()
    if not path.is_file():
        raise InputError(
            f"GPT-2 vocabulary {path} is missing; run `make setup` "
            "(or set CODEGPT_GPT2_RANKS to a gpt2.tiktoken file)"
        )
    digest = _sha256(path)
    if digest != RANKS_SHA256:
        raise InputError(
            f"GPT-2 vocabulary {path} has sha256 {digest[:12]}..., expected "
            f"{RANKS_SHA256[:12]}...; delete it and run `make setup` again"
        )
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=NAME,
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=dict(SPECIAL_TOKENS),
        explicit_n_vocab=N_IDS,
    )


def encode(text: str) -> list[int]:
    """Ordinary text -> ids; `<|endoftext|>` or `<fim_prefix>` inside source code is plain
    text here (what tokenize uses for every document)."""
    return get_encoding().encode_ordinary(text)


def encode_with_specials(text: str) -> list[int]:
    """Text -> ids where the special tokens written as text (`<fim_prefix>`, ...,
    `<|endoftext|>`) are their ids: for prompts that template FIM into one string, as
    Continue and Tabby do. Never for a training document."""
    return get_encoding().encode(text, allowed_special="all")


def decode(ids: list[int]) -> str:
    """Ids -> text; a special id decodes to its name (`<fim_middle>`)."""
    return get_encoding().decode(ids)


def special_tokens() -> dict[str, int]:
    """The special tokens, as the manifest records them (name -> id)."""
    return dict(SPECIAL_TOKENS)


def fetch(dest: Path | None = None) -> Path:
    """Download the whisper sdist with pip, extract gpt2.tiktoken, check it, write it atomically."""
    dest = dest or ranks_path()
    if dest.is_file() and _sha256(dest) == RANKS_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
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
            data = fobj.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise InputError(
            f"{WHISPER_SDIST}: gpt2.tiktoken has sha256 {digest}, expected {RANKS_SHA256}"
        )
    return write_atomically(dest, lambda f: f.write(data))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["fetch"]:
        print(f"GPT-2 vocabulary at {fetch()}")
        return 0
    if args == ["check"]:
        ids = encode("Hello world")
        print(f"Hello world -> {ids}")
        return 0 if ids == [15496, 995] else 1
    print("usage: python -m model.tokenizer fetch|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
