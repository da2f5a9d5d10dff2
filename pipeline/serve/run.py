"""One completions request in flight: its prompts submitted to the engine, their events
turned into OpenAI's response, whole (`collect`) or as server-sent events (`sse`).

The engine calls back on its own thread; `loop.call_soon_threadsafe` moves each
event onto this request's asyncio queue. Whatever way the request ends (done,
an error, the client gone), `cancel` frees its slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from model.completion import Event, Request, Token
from model.engine import Busy, Engine, Handle
from pipeline.serve.schema import ApiError, Completion

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5  # how often a non-streamed request checks that its client is there


@dataclass
class _Choice:
    """What has come of one choice so far (for a whole response)."""

    text: list[str] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    finish: str | None = None


def logprobs_json(tokens: list[Token] | tuple[Token, ...]) -> dict[str, Any]:
    """OpenAI's legacy logprobs object."""
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [t.top if t.logprob is not None else None for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }


class Run:
    """The engine requests of one completions request (one per prompt, `n` choices each)."""

    def __init__(self, c: Completion, jobs: list[tuple[str, Request]], engine: Engine) -> None:
        self.c, self.engine = c, engine
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.texts = [text for text, _ in jobs]
        self.prompt_tokens = sum(len(req.prompt) for _, req in jobs)
        self.choices = len(jobs) * c.n
        self.completion_tokens = [0] * self.choices
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.handles: list[Handle] = []
        self._echoed: set[int] = set()  # choices whose first event went out (echo)
        self.t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            for i, (_, req) in enumerate(jobs):
                self.handles.append(engine.submit(req, self._emitter(loop, i * c.n)))
        except Busy as e:
            self.cancel()
            raise ApiError(
                429,
                f"the server is busy: {engine.max_batch} sequences are generating and "
                f"{engine.max_queue} requests wait (max_batch, max_queue); retry after "
                f"{e.retry_after} s",
                kind="server_busy",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(e.retry_after)},
            ) from None

    def _emitter(self, loop: asyncio.AbstractEventLoop, base: int) -> Callable[[Event], None]:
        def emit(ev: Event) -> None:  # on the engine's thread
            loop.call_soon_threadsafe(self.queue.put_nowait, (base + ev.choice, ev))

        return emit

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def events(
        self, wait: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) until every choice has finished; `wait`, when given, is
        asked every DISCONNECT_POLL_S whether the client went away (then this stops)."""
        left = self.choices
        while left:
            if wait is None:
                k, ev = await self.queue.get()
            else:
                try:
                    k, ev = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await wait():
                        log.info("%s: the client went away; its slots are freed", self.id)
                        return
                    continue
            if ev.finish == "error":
                raise ApiError(500, f"generation failed: {ev.error}", kind="server_error")
            self.completion_tokens[k] = ev.completion_tokens
            left -= ev.finish is not None
            yield k, ev

    def _render(self, k: int, ev: Event) -> tuple[str, list[Token]]:
        """An event's text and tokens as the client sees them: with echo, a choice's first
        event starts with its prompt, and offsets count from the prompt's start."""
        if not self.c.echo:
            return ev.text, list(ev.tokens)
        prompt = self.texts[k // self.c.n]
        tokens = [Token(t.text, t.logprob, t.top, t.offset + len(prompt)) for t in ev.tokens]
        if k in self._echoed:
            return ev.text, tokens
        self._echoed.add(k)
        return prompt + ev.text, [*ev.prompt, *tokens]

    def _choice(self, k: int, text: str, tokens: list[Token], finish: str | None) -> dict[str, Any]:
        lp = logprobs_json(tokens) if self.c.logprobs is not None else None
        return {"index": k, "text": text, "logprobs": lp, "finish_reason": finish}

    async def collect(self, disconnected: Callable[[], Awaitable[bool]]) -> dict[str, Any]:
        """The whole response, once every choice has finished."""
        acc = [_Choice() for _ in range(self.choices)]
        try:
            async for k, ev in self.events(disconnected):
                text, tokens = self._render(k, ev)
                acc[k].text.append(text)
                acc[k].tokens.extend(tokens)
                acc[k].finish = ev.finish
        finally:
            self.cancel()
        self._log("whole")
        choices = [self._choice(k, "".join(a.text), a.tokens, a.finish) for k, a in enumerate(acc)]
        return {**self._head(), "choices": choices, "usage": self.usage()}

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events: one `data: {chunk}` per piece of text, then `data: [DONE]`.
        A client that goes away cancels this generator (Starlette does), which frees the
        request's slots."""
        how = "streamed"
        try:
            async for k, ev in self.events():
                text, tokens = self._render(k, ev)
                chunk = {**self._head(), "choices": [self._choice(k, text, tokens, ev.finish)]}
                yield _sse(chunk)
            if self.c.include_usage:
                yield _sse({**self._head(), "choices": [], "usage": self.usage()})
        except ApiError as e:
            how = f"failed: {e.message}"
            yield _sse(e.body())
        except BaseException:
            how = "client gone"
            raise
        finally:
            self.cancel()
            self._log(how)
        yield "data: [DONE]\n\n"

    def usage(self) -> dict[str, int]:
        done = sum(self.completion_tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def _head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.c.model,
        }

    def _log(self, how: str) -> None:
        u = self.usage()
        secs = time.perf_counter() - self.t0
        log.info(
            "%s: %d prompt + %d completion tokens, %d choices, %.2f s (%s)",
            self.id,
            u["prompt_tokens"],
            u["completion_tokens"],
            self.choices,
            secs,
            how,
        )


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
