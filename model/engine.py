"""Continuous batching: many completions generated together, one forward per step.

The engine knows nothing of HTTP (pipeline/serve/ is its face, as nanochat's
engine knows nothing of its web UI): a caller submits a `Request` (prompt ids,
`n` choices, sampling, stop strings) with a callback, and receives `Event`s,
the new text of one choice each, on the engine's thread.

Slots. The KV cache is one `KVCache` of batch `max_batch`: each sequence in
flight owns one row of it (a slot) and its own length. The active rows are
always [0, A): when a sequence leaves, the last row is moved into its place
(its keys and values copied up to its length), so a step reads the keys as a
view `k[:A, :, :span]` and never gathers them.

A step: (1) sequences whose consumer went away leave; (2) waiting requests
join, first come first served, while their choices fit in the free slots:
each prompt is prefilled alone into its first slot (batch 1, the forward
`generate()` runs), copied into its other choices' slots, and their first
tokens drawn; (3) one forward of all A rows, each at its own position
(`GPT.hidden_rows`), each row's token drawn with its own `Sampling` and
`torch.Generator`; (4) each choice's new text goes to its consumer, and the
finished leave. Nothing is cropped: a request must fit the context
(`prompt + max_tokens <= block_size`), which `submit` checks.

Greedy decoding equals `generate()`: with one row this runs exactly its ops
(the same prefill, the T == 1 attention without a mask, the same `Head`);
rows of different lengths add a mask, which can change a logit's last bits.

Ids become text in model/completion.py (`Choice`): whole UTF-8 characters,
stop strings, logprobs.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from model.completion import MAX_LOGPROBS, Choice, Event, Pick, Request, prompt_tokens
from model.generate import Head, next_token, tokenizer_of, vocabulary
from model.gpt import GPT, KVCache

log = logging.getLogger(__name__)


class Busy(Exception):
    """The batch and the queue are full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"busy: retry after {retry_after} s")
        self.retry_after = retry_after


class Handle:
    """A submitted request: `cancel()` frees its slots at the next step."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.cancelled = False
        self._wake = wake

    def cancel(self) -> None:
        self.cancelled = True
        self._wake()


@dataclass
class _Job:
    request: Request
    emit: Callable[[Event], None]
    handle: Handle
    failed: bool = False  # its callback raised: it gets nothing more


@dataclass
class _Seq:
    """One choice in flight: row i of the cache while it is `Engine._rows[i]`."""

    job: _Job
    choice: Choice
    generator: torch.Generator | None
    length: int  # cache positions filled
    last: int = -1  # the token to feed next

    @property
    def done(self) -> bool:
        return self.choice.finish is not None


class Engine:
    """Generation for many requests at once over one model (see the module docstring)."""

    def __init__(
        self,
        model: GPT,
        *,
        max_batch: int = 8,
        max_queue: int = 32,
        autocast: Callable[[], AbstractContextManager[object]] | None = None,
        cache_dtype: torch.dtype | None = None,
        threads: int = 0,
    ) -> None:
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.block = model.cfg.block_size
        self.device = next(model.parameters()).device
        dtype = cache_dtype or next(model.parameters()).dtype
        self._cache = KVCache(model.cfg, max_batch, self.block, self.device, dtype)
        self._autocast = autocast or contextlib.nullcontext
        self.tok = tokenizer_of(model)  # the checkpoint's: its vocabulary, sentinels, text
        self._heads = {rows: Head(model, rows) for rows in (self.tok.n_vocab, self.tok.n_ids)}
        self._rows: list[_Seq] = []  # row i of the cache is _rows[i]
        self._waiting: collections.deque[_Job] = collections.deque()
        self._reserved = 0  # slots of the sequences in _rows (read by submit)
        self._cond = threading.Condition()
        self._stopping = False
        self._prefilling: _Job | None = None  # failed with the others if a step raises
        self._thread: threading.Thread | None = None
        self.threads = threads  # torch's intra-op threads for the engine's thread; 0: as is
        self.steps = self.tokens = 0

    # --- the caller's side (any thread) ---------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="codegpt-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def load(self) -> tuple[int, int]:
        """(sequences generating, requests waiting)."""
        with self._cond:
            return self._reserved, sum(not j.handle.cancelled for j in self._waiting)

    def submit(self, request: Request, emit: Callable[[Event], None]) -> Handle:
        """Queue `request`; `emit` gets its events on the engine's thread and must not block.
        Busy when it would wait behind `max_queue` others; ValueError when it cannot fit."""
        p, m = len(request.prompt), request.max_tokens
        if not request.prompt or m < 0 or p + m > self.block:
            raise ValueError(f"prompt {p} + max_tokens {m} must be in [1, {self.block}]")
        if not 1 <= request.n <= self.max_batch:
            raise ValueError(f"n={request.n} must be in [1, max_batch={self.max_batch}]")
        with self._cond:
            if self._stopping:
                raise Busy(retry_after=5)
            free, queued = self.max_batch - self._reserved, 0
            for job in self._waiting:  # first come first served: who would still wait
                if job.handle.cancelled:
                    continue
                if queued == 0 and job.request.n <= free:
                    free -= job.request.n
                else:
                    queued += 1
            if (queued or request.n > free) and queued >= self.max_queue:
                raise Busy(retry_after=1)
            handle = Handle(self._wake)
            self._waiting.append(_Job(request, emit, handle))
            self._cond.notify_all()
        return handle

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- the engine's thread ------------------------------------------------------------

    def _run(self) -> None:
        if self.threads:  # OpenMP's thread count is the calling thread's: set it here
            torch.set_num_threads(self.threads)
        with torch.no_grad():
            while True:
                with self._cond:
                    while not (self._rows or self._waiting or self._stopping):
                        self._cond.wait()
                    if self._stopping:
                        break
                try:
                    self._step()
                except Exception:  # a bug must not take the server down with it
                    log.exception("engine step failed; failing the requests in flight")
                    self._fail_all("internal error in the engine (the server log says more)")
        self._fail_all("the server is shutting down")

    def _step(self) -> None:
        for seq in self._rows:
            if seq.job.handle.cancelled or seq.job.failed:
                seq.choice.finish = "cancelled"  # silently: nobody listens
        self._reap()
        while (job := self._next_job()) is not None:
            self._prefill(job)
        if self._rows:
            self._decode()
            self.steps += 1

    def _next_job(self) -> _Job | None:
        with self._cond:
            while self._waiting and self._waiting[0].handle.cancelled:
                self._waiting.popleft()
            if not self._waiting or self._waiting[0].request.n > self.max_batch - self._reserved:
                return None
            job = self._waiting.popleft()
            self._reserved += job.request.n if job.request.max_tokens else 0
            return job

    def _prefill(self, job: _Job) -> None:
        """The prompt into the first free row; its choices' rows copied from it."""
        self._prefilling = job
        req, row = job.request, len(self._rows)
        view = self._cache.row(row)  # row `row` of the cache as a batch-1 cache
        idx = torch.tensor([req.prompt], dtype=torch.long, device=self.device)  # (1, P)
        head = self._heads[vocabulary(self.tok, req.fim)[0]]
        with self._autocast():
            h = self.model.hidden_cached(idx, view)  # (1, P, C)
            logits = head(h[:, -1, :])  # (1, V)
            prompt = prompt_tokens(req, head(h[0, :-1, :]), self.tok) if req.prompt_logprobs else ()
        seqs = [
            _Seq(job, Choice(req, j, self.tok, prompt), self._generator(req, j), len(req.prompt))
            for j in range(req.n)
        ]
        if req.max_tokens == 0:  # echo only: the prompt, nothing drawn
            for seq in seqs:
                self._send(job, seq.choice.end("length"))
        else:
            for j in range(1, req.n):
                self._copy_row(row, row + j, len(req.prompt))
            self._rows.extend(seqs)
            self._advance(seqs, logits.expand(req.n, -1))
            self._reap()
        self._prefilling = None

    def _decode(self) -> None:
        """One forward of every active row, each at its own position."""
        rows = self._rows
        idx = torch.tensor([[s.last] for s in rows], dtype=torch.long, device=self.device)
        fim = any(s.job.request.fim for s in rows)
        head = self._heads[self.tok.n_ids if fim else self.tok.n_vocab]
        with self._autocast():
            h = self.model.hidden_rows(idx, self._cache, [s.length for s in rows])  # (A, 1, C)
            logits = head(h[:, 0, :])  # (A, V)
        for s in rows:
            s.length += 1
        self._advance(rows, logits)
        self._reap()

    def _generator(self, req: Request, choice: int) -> torch.Generator | None:
        if req.sampling.temperature == 0:
            return None
        gen = torch.Generator(device=self.device)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        gen.manual_seed((seed + choice) % 2**64)  # manual_seed takes [0, 2**64)
        return gen

    def _copy_row(self, src: int, dst: int, length: int) -> None:
        for k, v in zip(self._cache.k, self._cache.v, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def _reap(self) -> None:
        """Finished rows leave; the last row moves into each hole (rows stay [0, A))."""
        for i in range(len(self._rows) - 1, -1, -1):
            if not self._rows[i].done:
                continue
            last = len(self._rows) - 1
            if i != last:
                self._copy_row(last, i, self._rows[last].length)
                self._rows[i] = self._rows[last]
            self._rows.pop()
            with self._cond:
                self._reserved -= 1

    def _fail_all(self, why: str) -> None:
        """Every request in flight or waiting ends with an error event; the cache is free."""
        failed = [(s.job, s.choice.index) for s in self._rows if not s.done]
        job, self._prefilling = self._prefilling, None
        with self._cond:
            waiting = [*([job] if job is not None else []), *self._waiting]
            self._waiting.clear()
            self._rows.clear()
            self._reserved = 0
        failed += [(j, c) for j in waiting for c in range(j.request.n)]
        for job, choice in failed:
            self._send(job, Event(choice, "", finish="error", error=why))

    # --- tokens to text -----------------------------------------------------------------

    def _advance(self, seqs: list[_Seq], logits: Tensor) -> None:
        """Draw each row's token from logits (len(seqs), V); its text to its consumer."""
        lg = logits.float()
        plain = [i for i, s in enumerate(seqs) if not s.job.request.fim]
        n_vocab = self.tok.n_vocab
        if lg.shape[-1] > n_vocab and plain:
            lg = lg.clone()
            lg[plain, n_vocab:] = -torch.inf  # a plain prompt never draws a sentinel
        toks = lg.argmax(dim=-1)  # (A,): every greedy row in one call
        for i, s in enumerate(seqs):  # the sampled rows, each with its own generator
            req = s.job.request
            if req.sampling.temperature > 0:
                allowed = vocabulary(self.tok, req.fim)[0]
                toks[i] = next_token(lg[i : i + 1], req.sampling, s.generator, allowed)[0, 0]
        infos = self._logprobs(seqs, lg, toks)
        self.tokens += len(seqs)
        for s, tok, info in zip(seqs, toks.tolist(), infos, strict=True):
            s.last = tok
            self._send(s.job, s.choice.add(tok, info))

    def _logprobs(self, seqs: list[_Seq], lg: Tensor, toks: Tensor) -> list[Pick | None]:
        """For the rows that asked: the drawn token's log-probability and the top k."""
        want = [i for i, s in enumerate(seqs) if s.job.request.logprobs is not None]
        out: list[Pick | None] = [None] * len(seqs)
        if not want:
            return out
        lp = torch.log_softmax(lg[want], dim=-1)  # (W, V); -inf past `allowed`
        chosen = lp.gather(1, toks[want].view(-1, 1))[:, 0].tolist()
        top = torch.topk(lp, MAX_LOGPROBS, dim=-1)
        values, ids = top.values.tolist(), top.indices.tolist()
        for w, i in enumerate(want):
            k = seqs[i].job.request.logprobs or 0
            out[i] = (chosen[w], list(zip(ids[w][:k], values[w][:k], strict=True)))
        return out

    def _send(self, job: _Job, event: Event | None) -> None:
        if event is None or job.failed or job.handle.cancelled:
            return
        try:
            job.emit(event)
        except Exception:
            log.exception("a consumer's callback failed; its request is dropped")
            job.failed = True
