"""The server through the official openai client (and raw HTTP where a client would not
send such a thing), on loopback, against a real `python -m pipeline serve` process."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from model import tokenizer as _tokenizer
from model.checkpoint import load_for_inference
from model.fim import psm_prompt
from model.generate import Sampling, generate
from tests.pipeline.serve.conftest import KEY, Server, make_run, start, stop

decode = _tokenizer.get().decode  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)

MODEL = "tinyfim"


def client(server: Server, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, **kw)  # type: ignore[arg-type]


def greedy(run: Path, ids: list[int], n: int, fim: bool = False) -> str:
    model, _, _ = load_for_inference(run)
    return decode(list(generate(model, ids, n, Sampling(temperature=0), fim=fim)))


def healthy(server: Server) -> None:
    """The server still answers a good request."""
    out = client(server).completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert out.choices[0].finish_reason in ("length", "stop")


def test_models_lists_the_run_with_its_step(server: Server) -> None:
    (m,) = client(server).models.list().data
    assert m.id == MODEL and m.model_dump()["step"] == 3
    assert m.model_dump()["context_length"] == 64
    assert "model 'tinyfim'" in server.text() and "max_batch 4, max_queue 2" in server.text()


def test_greedy_completion_equals_generate_and_the_stream_equals_it(server: Server) -> None:
    c = client(server)
    want = greedy(server.run, encode("def main():"), 20)
    out = c.completions.create(model=MODEL, prompt="def main():", max_tokens=20, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.choices[0].text == want and out.choices[0].finish_reason == "length"
    assert out.usage is not None and (out.usage.prompt_tokens, out.usage.completion_tokens) == (
        len(encode("def main():")),
        20,
    )
    chunks = list(
        c.completions.create(
            model=MODEL, prompt="def main():", max_tokens=20, temperature=0, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks) == want
    assert len(chunks) > 1 and chunks[-1].choices[0].finish_reason == "length"
    assert all("\ufffd" not in ch.choices[0].text for ch in chunks)


def test_stop_strings_end_the_text_before_them_streamed_or_not(server: Server) -> None:
    c = client(server)
    full = greedy(server.run, encode("import os"), 16)
    stop = full[5:9]  # a piece of what greedy decoding writes
    want = full[: full.index(stop)]
    kw = {"model": MODEL, "prompt": "import os", "max_tokens": 16, "temperature": 0}
    out = c.completions.create(**kw, stop=[stop, "never here"])  # type: ignore[call-overload]
    assert out.choices[0].text == want and out.choices[0].finish_reason == "stop"
    streamed = list(c.completions.create(**kw, stop=stop, stream=True))  # type: ignore[call-overload]
    assert "".join(ch.choices[0].text for ch in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_n_choices_and_a_seed_reproduce_a_sample(server: Server) -> None:
    c = client(server)
    kw = {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 8, "temperature": 1.0, "n": 2}
    one = c.completions.create(**kw, seed=7)  # type: ignore[call-overload]
    two = c.completions.create(**kw, seed=7)  # type: ignore[call-overload]
    assert [ch.index for ch in one.choices] == [0, 1, 2, 3]
    assert [ch.text for ch in one.choices] == [ch.text for ch in two.choices]
    assert one.choices[0].text != one.choices[1].text  # choice j draws with seed + j


def test_suffix_is_a_fim_prompt_and_a_templated_prompt_is_the_same(server: Server) -> None:
    c = client(server)
    want = greedy(server.run, psm_prompt(_tokenizer.get(), "def f(", "):\n"), 10, fim=True)
    out = c.completions.create(
        model=MODEL, prompt="def f(", suffix="):\n", max_tokens=10, temperature=0
    )
    assert out.choices[0].text == want
    templated = "<fim_prefix>def f(<fim_suffix>):\n<fim_middle>"  # as Continue sends it
    out = c.completions.create(model=MODEL, prompt=templated, max_tokens=10, temperature=0)
    assert out.choices[0].text == want


def test_echo_and_logprobs(server: Server) -> None:
    c = client(server)
    out = c.completions.create(
        model=MODEL, prompt="x = 1", max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    choice = out.choices[0]
    assert choice.text == "x = 1" + greedy(server.run, encode("x = 1"), 3)
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert len(lp.tokens) == len(encode("x = 1")) + 3 and lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == choice.text and lp.text_offset is not None
    assert lp.text_offset[-1] == len(choice.text) - len(lp.tokens[-1])
    assert lp.top_logprobs is not None and all(len(t) <= 2 for t in lp.top_logprobs[1:] if t)
    top = lp.top_logprobs[-1]
    assert top is not None and max(top.values()) == pytest.approx(lp.token_logprobs[-1])


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"model": "tinyfim", "prompt": ', 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"model": "tinyfim", "prompt": "a", "max_tokens": "3"}', 400, "'max_tokens' must be"),
        (b'{"model": "tinyfim", "prompt": "a", "temperature": 9}', 400, "'temperature'"),
        (b'{"model": "tinyfim", "prompt": "a", "n": 5}', 400, "'n' must be an integer from 1 to 4"),
        (b'{"model": "tinyfim", "prompt": "a", "stop": ["a","b","c","d","e"]}', 400, "'stop'"),
        (b'{"model": "tinyfim", "prompt": [1, 2]}', 400, "token ids are not accepted"),
        (b'{"model": "other", "prompt": "a"}', 404, "this server serves 'tinyfim'"),
        (b'{"model": "tinyfim", "prompt": "a", "max_tokens": 70}', 400, "context is 64 tokens"),
        (b'{"model": "tinyfim", "prompt": "' + b"a" * 5000 + b'"}', 413, "over 4096 bytes"),
    ],
)
def test_bad_requests_get_openais_error_shape_and_the_server_goes_on(
    server: Server, body: bytes, status: int, says: str
) -> None:
    r = httpx.post(f"{server.url}/completions", content=body, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and says in error["message"]
    healthy(server)


def test_the_context_error_names_both_numbers_through_the_client(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model=MODEL, prompt="a b c", max_tokens=62)
    assert "the prompt is 3 tokens and max_tokens is 62" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="gpt-4", prompt="a")
    healthy(server)


def test_full_means_429_and_a_client_that_disconnects_frees_its_slot(tmp_path: Path) -> None:
    """One slot, no queue: a long stream (1000 tokens) holds it, so another request gets a
    429 with Retry-After; its client closes the socket and the slot is free again."""
    run = make_run(tmp_path / "long", fim_rate=0.0, block_size=1024)
    s = start(run, tmp_path / "log", "max_batch=1", "max_queue=0")
    health = s.url.replace("/v1", "/health")
    try:
        body = {"model": "long", "prompt": "a", "max_tokens": 1000, "stream": True}
        raw = json.dumps(body).encode()
        host, port = s.url.split("//")[1].split("/")[0].split(":")
        sock = socket.create_connection((host, int(port)))
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        got = b""
        while b"data: " not in got:  # it streams...
            got += sock.recv(4096)
        assert httpx.get(health).json()["active"] == 1
        with pytest.raises(openai.RateLimitError) as busy:
            client(s).completions.create(model="long", prompt="b", max_tokens=2)
        assert busy.value.response.headers["retry-after"] == "1"
        assert "max_batch, max_queue" in str(busy.value)
        sock.close()  # ...and the client goes away mid-stream
        deadline = time.monotonic() + 10
        while httpx.get(health).json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        state = httpx.get(health).json()
        assert state["active"] == 0 and state["tokens"] < 1000  # it stopped early
        time.sleep(0.2)
        assert "(client gone)" in s.text()
        assert client(s).completions.create(model="long", prompt="x", max_tokens=2).choices
    finally:
        stop(s)


@pytest.mark.serial  # a load test: 36 requests against a time limit, alone on the CPU
def test_bounded_load_all_served_or_told_to_retry(server: Server) -> None:
    """12 concurrent streaming clients, 3 requests each, against max_batch 4 + max_queue 2:
    every request is served whole or refused with a 429 and Retry-After, none hangs."""
    want = greedy(server.run, encode("for i in"), 12)

    def one(_: int) -> str:
        c = client(server, timeout=30)
        try:
            stream = c.completions.create(
                model=MODEL, prompt="for i in", max_tokens=12, temperature=0, stream=True
            )
            return "ok" if "".join(ch.choices[0].text for ch in stream) == want else "wrong"
        except openai.RateLimitError as e:
            assert e.response.headers["retry-after"] == "1"
            return "busy"

    t0 = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(36)))
    assert time.monotonic() - t0 < 60
    assert set(results) <= {"ok", "busy"} and results.count("ok") >= 6, results
    healthy(server)


def test_api_key(fim_run: Path, tmp_path: Path) -> None:
    s = start(fim_run, tmp_path / "log", f"api_key={KEY}")
    try:
        with pytest.raises(openai.AuthenticationError, match="no API key|wrong API key"):
            client(s).models.list()
        r = httpx.get(f"{s.url}/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=s.url, api_key=KEY, max_retries=0)
        assert ok.completions.create(model=MODEL, prompt="a", max_tokens=1).choices
    finally:
        stop(s)


def test_a_run_without_fim_refuses_suffix(tmp_path: Path) -> None:
    run = make_run(tmp_path / "plain", fim_rate=0.0)
    s = start(run, tmp_path / "log")
    try:
        c = client(s)
        with pytest.raises(openai.BadRequestError, match="not trained for fill-in-the-middle"):
            c.completions.create(model="plain", prompt="a", suffix="b")
        with pytest.raises(openai.BadRequestError, match="FIM sentinels"):
            c.completions.create(model="plain", prompt="<fim_prefix>a<fim_middle>")
        assert c.completions.create(model="plain", prompt="a", max_tokens=2).choices
    finally:
        stop(s)
