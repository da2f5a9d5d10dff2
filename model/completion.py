"""One completion's text as its tokens are drawn: what the engine's consumers receive.

The engine (model/engine.py) draws ids; a `Choice` turns them into text
pieces (`Event`s) for one of a request's `n` choices:

- each id goes through the choice's own `StreamDecoder`, so a piece never
  splits a UTF-8 character (GPT-2's byte-level BPE can cut one in two);
- a stop string ends the text just before it, and the tail that could still
  grow into a stop string is held back until it cannot, so a streamed text
  never shows a stop string, nor half of one, that the full text would not;
- end-of-text (and, for a fill-in-the-middle prompt, any sentinel) ends it
  with finish "stop", `max_tokens` with finish "length";
- with logprobs, each token travels with the piece its text starts in.

Nothing here knows of HTTP or of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from model.generate import Sampling, StreamDecoder, vocabulary
from model.tokenizer import Tokenizer

MAX_LOGPROBS = 5  # alternatives per token, as OpenAI's completions API allows
Pick = tuple[float, list[tuple[int, float]]]  # a drawn token's log-probability, the top k
GREEDY = Sampling(temperature=0.0)


@dataclass(frozen=True, kw_only=True)
class Request:
    """One prompt and how to continue it, `n` times."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling = GREEDY
    n: int = 1
    stop: tuple[str, ...] = ()  # the text ends before the first of these
    seed: int | None = None  # choice j draws from a generator seeded seed + j; None = random
    logprobs: int | None = None  # the k likeliest tokens at each step (0: the chosen only)
    prompt_logprobs: bool = False  # the prompt's tokens too (echo)
    fim: bool = False  # the sentinels may be drawn and end the text (vocabulary(tok, True))


@dataclass(frozen=True)
class Token:
    """One token, for logprobs: its text, its log-probability under the model (softmax of
    the raw logits over the ids that may be drawn), the likeliest alternatives, and
    where its text starts in the choice's text (or the prompt's)."""

    text: str
    logprob: float | None  # None: the prompt's first token (nothing before it)
    top: dict[str, float]
    offset: int


@dataclass(frozen=True)
class Event:
    """New text of one choice; a choice's last event has `finish`: "stop" (end of text,
    a sentinel or a stop string), "length" (max_tokens) or "error" (`error` says why)."""

    choice: int
    text: str
    tokens: tuple[Token, ...] = ()
    prompt: tuple[Token, ...] = ()  # the prompt's tokens, in a choice's first event
    finish: str | None = None
    completion_tokens: int = 0  # tokens drawn so far for this choice
    error: str = ""


def token_text(tok: Tokenizer, token: int) -> str:
    """One token's own text (half a character shows as U+FFFD)."""
    return tok.token_bytes(token).decode("utf-8", errors="replace")


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that begin some stop string: not to be sent yet."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def find_stop(text: str, stops: tuple[str, ...], start: int) -> int:
    """The first position >= start at which a stop string begins, or -1."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else -1


def prompt_tokens(req: Request, logits: Tensor, tok: Tokenizer) -> tuple[Token, ...]:
    """The prompt's tokens for echo with logprobs; logits (P - 1, V): token i's
    log-probability is read from the logits after tokens [0, i)."""
    lp = torch.log_softmax(logits.float()[:, : vocabulary(tok, req.fim)[0]], dim=-1)
    ids = torch.tensor(req.prompt[1:], dtype=torch.long, device=lp.device)
    chosen = lp.gather(1, ids.view(-1, 1))[:, 0].tolist()
    top = torch.topk(lp, req.logprobs or 0, dim=-1)
    values, alts = top.values.tolist(), top.indices.tolist()
    out, offset = [], 0
    for i, t in enumerate(req.prompt):
        names = [token_text(tok, a) for a in alts[i - 1]] if i else []
        best = dict(zip(names, values[i - 1], strict=True)) if i else {}
        out.append(Token(token_text(tok, t), chosen[i - 1] if i else None, best, offset))
        offset += len(out[-1].text)
    return tuple(out)


@dataclass
class Choice:
    """The text of one choice so far, and what of it has been sent."""

    request: Request
    index: int
    tok: Tokenizer  # the model's (what decodes its ids)
    prompt: tuple[Token, ...] = ()  # sent with the first event
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    _decoder: StreamDecoder = field(init=False)
    _sent: int = 0  # characters of text already in an event
    _pending: list[Token] = field(default_factory=list)
    _started: bool = False
    _cut: bool = False  # the text was cut at a stop string

    def __post_init__(self) -> None:
        self._decoder = StreamDecoder(self.tok)

    def add(self, token: int, pick: Pick | None) -> Event | None:
        """The next drawn id (and its logprobs); the event to send, if any."""
        req = self.request
        if token in vocabulary(self.tok, req.fim)[1]:
            return self.end("stop")
        self.tokens.append(token)
        before = len(self.text)
        self.text += self._decoder.push(token)
        if pick is not None:
            top = {token_text(self.tok, t): v for t, v in pick[1]}
            self._pending.append(Token(token_text(self.tok, token), pick[0], top, before))
        if req.stop:
            longest = max(len(s) for s in req.stop)
            at = find_stop(self.text, req.stop, max(0, before - longest + 1))
            if at >= 0:
                self.text, self._cut = self.text[:at], True
                return self.end("stop")
        if len(self.tokens) >= req.max_tokens:
            return self.end("length")
        return self.event()

    def end(self, reason: str) -> Event | None:
        self.finish = reason
        if not self._cut:
            self.text += self._decoder.flush()  # a character left half-done becomes U+FFFD
        return self.event()

    def event(self) -> Event | None:
        final = self.finish is not None
        end = len(self.text) if final else len(self.text) - held_back(self.text, self.request.stop)
        piece = self.text[self._sent : end]
        if not (piece or final or (self.prompt and not self._started)):
            return None
        # a token goes out with the piece its text starts in; one past a stop string never
        n = sum(1 for t in self._pending if t.offset < end or (final and not self._cut))
        tokens, self._pending = tuple(self._pending[:n]), self._pending[n:]
        prompt = () if self._started else self.prompt
        self._sent, self._started = end, True
        return Event(self.index, piece, tokens, prompt, self.finish, len(self.tokens))
