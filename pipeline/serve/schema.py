"""The completions request body, checked: OpenAI's fields, their types and ranges.

Each problem is an `ApiError` whose message names the field and says what is
accepted; the app turns it into OpenAI's error shape and status. Fields that
OpenAI's API has and this server does not implement are refused only when
they ask for something (`best_of` > 1, a `logit_bias`, non-zero penalties);
fields no one here knows are ignored, as OpenAI-compatible servers do, since
editors send extras of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model.completion import MAX_LOGPROBS

MAX_STOPS = 4  # as OpenAI's API
DEFAULT_MAX_TOKENS = 16  # as OpenAI's API


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Completion:
    """A checked `POST /v1/completions` body."""

    model: str
    prompts: list[str]
    suffix: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    seed: int | None
    echo: bool
    logprobs: int | None


def _bad(param: str, what: str) -> ApiError:
    return ApiError(400, f"'{param}' must be {what}", param=param, code="invalid_value")


def _int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(key, f"an integer from {lo} to {hi}, got {json.dumps(v)}")
    return v


def _float(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _bad(key, f"a number from {lo:g} to {hi:g}, got {json.dumps(v)}")
    return float(v)


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):
        raise _bad(key, f"true or false, got {json.dumps(v)}")
    return bool(v)


def _prompts(body: dict[str, Any]) -> list[str]:
    v = body.get("prompt")
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(p, str) for p in v):
        return v
    if isinstance(v, list) and v and all(isinstance(p, int) for p in v):
        raise _bad("prompt", "text (a string or a list of strings); token ids are not accepted")
    raise _bad("prompt", "a string or a non-empty list of strings")


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not (
        isinstance(stops, list)
        and len(stops) <= MAX_STOPS
        and all(isinstance(s, str) and s for s in stops)
    ):
        raise _bad("stop", f"a non-empty string or a list of at most {MAX_STOPS} of them")
    return tuple(stops)


def _unsupported(body: dict[str, Any]) -> None:
    """OpenAI's fields this server does not implement: refused when they would matter."""
    if (_int(body, "best_of", 1, 0, 2**31) or 1) > 1:
        raise ApiError(400, "'best_of' > 1 is not supported; use n", param="best_of")
    if body.get("logit_bias"):
        raise ApiError(400, "'logit_bias' is not supported", param="logit_bias")
    for key in ("presence_penalty", "frequency_penalty"):
        if _float(body, key, 0.0, -2.0, 2.0) != 0:
            raise ApiError(400, f"'{key}' is not supported; send 0 or leave it out", param=key)


def parse(raw: bytes, max_n: int) -> Completion:
    """The body of a completions request, or the ApiError that says what is wrong with it."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "the name of the model (GET /v1/models lists it)")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad("suffix", "a string")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", 'an object such as {"include_usage": true}')
    _unsupported(body)
    max_tokens = _int(body, "max_tokens", DEFAULT_MAX_TOKENS, 0, 2**31)
    n = _int(body, "n", 1, 1, max_n)
    top_k = _int(body, "top_k", 0, -1, 2**31)
    assert max_tokens is not None and n is not None and top_k is not None
    return Completion(
        model=model,
        prompts=_prompts(body),
        suffix=suffix,
        max_tokens=max_tokens,
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=max(_float(body, "top_p", 1.0, 0.0, 1.0), 1e-9),  # 0: the likeliest token only
        top_k=max(top_k, 0),  # vLLM's -1 and 0 both mean all tokens
        n=n,
        stop=_stop(body),
        stream=_bool(body, "stream"),
        include_usage=_bool(options or {}, "include_usage"),
        seed=_int(body, "seed", None, -(2**63), 2**64 - 1),
        echo=_bool(body, "echo"),
        logprobs=_int(body, "logprobs", None, 0, MAX_LOGPROBS),
    )
