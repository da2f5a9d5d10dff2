"""The HTTP face of the engine: OpenAI's completions API as a Starlette app.

    POST /v1/completions   prompt(s) -> text; `stream: true` for server-sent events
    GET  /v1/models        the one model: the run, with its step and context
    GET  /health           liveness and the engine's load

Everything about HTTP lives here: the API key, the body limit, the checks of
pipeline/serve/schema.py, the statuses and OpenAI's error shape. Generation is
model/engine.py's; pipeline/serve/run.py carries one request's events. Any
error in a request becomes that request's error response: the engine and the
other requests go on.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from model.completion import Request
from model.engine import Engine
from model.fim import psm_prompt
from model.generate import Sampling
from pipeline.serve.run import Run
from pipeline.serve.schema import ApiError, Completion, parse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """What the server serves and its limits."""

    name: str  # the model id clients send
    step: int
    created: int  # the checkpoint's mtime, seconds
    context: int  # block_size: prompt + max_tokens must fit
    fim: bool  # trained with fill-in-the-middle (fim_rate > 0)
    engine: Engine
    api_key: str = ""  # "" = no key asked
    max_body: int = 1 << 20  # bytes


def encode_prompt(prompt: str, suffix: str | None, served: Served) -> tuple[list[int], bool]:
    """(ids, is it a FIM prompt). A `suffix` makes a PSM prompt; a prompt that spells the
    sentinels (as Continue and Tabby template FIM) gets them as their ids."""
    untrained = (
        f"model '{served.name}' was not trained for fill-in-the-middle (its run has "
        "fim_rate 0); serve a run trained with fim_rate > 0"
    )
    tok = served.engine.tok  # the checkpoint's tokenizer
    if suffix is not None:
        if not served.fim:
            raise ApiError(400, f"'suffix' needs FIM: {untrained}", param="suffix")
        return psm_prompt(tok, prompt, suffix), True
    ids = tok.encode_with_specials(prompt) if prompt else [tok.eot]
    if any(tok.fim_prefix <= t <= tok.fim_pad for t in ids):
        if not served.fim:
            raise ApiError(400, f"the prompt holds FIM sentinels: {untrained}", param="prompt")
        return ids, tok.fim_middle in ids
    return ids, False


def engine_requests(c: Completion, served: Served) -> list[tuple[str, Request]]:
    """One engine request per prompt, each checked against the context."""
    sampling = Sampling(temperature=c.temperature, top_k=c.top_k, top_p=c.top_p)
    out = []
    for prompt in c.prompts:
        ids, fim = encode_prompt(prompt, c.suffix, served)
        p, m = len(ids), c.max_tokens
        if p + m > served.context:
            raise ApiError(
                400,
                f"this model's context is {served.context} tokens, but the prompt is {p} "
                f"tokens and max_tokens is {m} ({p + m} in all): shorten the prompt or "
                "lower max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        req = Request(
            prompt=ids,
            max_tokens=m,
            sampling=sampling,
            n=c.n,
            stop=c.stop,
            seed=c.seed,
            logprobs=c.logprobs,
            prompt_logprobs=c.echo and c.logprobs is not None,
            fim=fim,
        )
        out.append((prompt, req))
    return out


def _served(request: HttpRequest) -> Served:
    served: Served = request.app.state.served
    return served


def _check_key(request: HttpRequest, served: Served) -> None:
    if not served.api_key:
        return
    got = request.headers.get("authorization", "")
    scheme, _, key = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        key.strip().encode(), served.api_key.encode()
    ):
        what = "a wrong API key" if got else "no API key"
        raise ApiError(
            401,
            f"{what}: send the server's key as 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )


async def _body(request: HttpRequest, limit: int) -> bytes:
    too_big = ApiError(
        413, f"the body is over {limit} bytes (max_body_bytes)", code="request_too_large"
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def completions(request: HttpRequest) -> Response:
    served = _served(request)
    _check_key(request, served)
    c = parse(await _body(request, served.max_body), served.engine.max_batch)
    if c.model != served.name:
        raise ApiError(
            404,
            f"the model '{c.model}' does not exist; this server serves '{served.name}'",
            param="model",
            code="model_not_found",
        )
    run = Run(c, engine_requests(c, served), served.engine)
    if c.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(run.sse(), media_type="text/event-stream", headers=headers)
    return JSONResponse(await run.collect(request.is_disconnected))


async def models(request: HttpRequest) -> Response:
    served = _served(request)
    _check_key(request, served)
    return JSONResponse({"object": "list", "data": [_model(served)]})


def _model(served: Served) -> dict[str, Any]:
    return {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "codegpt",
        "step": served.step,
        "context_length": served.context,
        "fim": served.fim,
    }


async def health(request: HttpRequest) -> Response:
    served = _served(request)
    active, queued = served.engine.load()
    body = {"status": "ok", "model": served.name, "step": served.step}
    load = {"active": active, "queued": queued, "tokens": served.engine.tokens}
    return JSONResponse({**body, **load})


async def _api_error(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: HttpRequest, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    what = f"{request.method} {request.url.path}: {exc.detail}"
    return await _api_error(
        request, ApiError(exc.status_code, what, headers=dict(exc.headers or {}))
    )


async def _server_error(request: HttpRequest, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    error = ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error")
    return JSONResponse(error.body(), status_code=500)


def build_app(served: Served) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.served = served
    return app
