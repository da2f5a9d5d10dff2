"""model/engine.py and model/completion.py without HTTP: continuous batching gives each
request what generate() gives it alone; stop strings and UTF-8 pieces."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from model import tokenizer as _tokenizer
from model.completion import Choice, Event, Request, held_back
from model.engine import Busy, Engine
from model.generate import Sampling, generate
from model.gpt import GPT, GPTConfig

decode = _tokenizer.get().decode  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50304)).eval()


def run_all(engine: Engine, requests: list[Request], timeout: float = 30) -> list[list[Event]]:
    events: list[list[Event]] = [[] for _ in requests]
    left = [r.n for r in requests]
    done = threading.Event()
    lock = threading.Lock()

    def emitter(i: int) -> Callable[[Event], None]:
        def emit(ev: Event) -> None:
            events[i].append(ev)
            if ev.finish:
                with lock:
                    left[i] -= 1
                    if not any(left):
                        done.set()

        return emit

    for i, r in enumerate(requests):
        engine.submit(r, emitter(i))
    assert done.wait(timeout)
    return events


def test_requests_of_different_lengths_batched_equal_generate_alone() -> None:
    model = tiny()
    engine = Engine(model, max_batch=3, max_queue=8)
    engine.start()
    try:
        prompts = ["def main():", "import os\nimport sys", "x", "class A:\n    def", "y = ["]
        reqs = [Request(prompt=encode(p), max_tokens=10 + 7 * i) for i, p in enumerate(prompts)]
        got = run_all(engine, reqs)  # 5 requests on 3 slots: some join as others leave
    finally:
        engine.stop()
    for req, events in zip(reqs, got, strict=True):
        want = decode(list(generate(model, req.prompt, req.max_tokens, Sampling(temperature=0))))
        assert "".join(e.text for e in events) == want
        assert events[-1].finish == "length" and events[-1].completion_tokens == req.max_tokens
    assert engine.steps < sum(r.max_tokens for r in reqs)  # they did share forwards


def test_every_choice_of_a_request_starts_from_the_same_prompt_cache() -> None:
    """n greedy choices of one prompt are one path: the prompt is prefilled once and its
    keys and values copied into every other choice's slot, so each step's logprob is the
    same in every choice, and the same as a request with n=1 (a slot that missed the copy
    draws its first token from the shared logits but its second from an empty cache:
    -10.228 against -10.226 on this model)."""
    model = tiny()
    engine = Engine(model, max_batch=5)
    engine.start()
    try:
        prompt = encode("def main():\n    total = 0\n    for i in range(10):")
        reqs = [Request(prompt=prompt, max_tokens=6, n=n, logprobs=0) for n in (4, 1)]
        got = run_all(engine, reqs)
    finally:
        engine.stop()
    paths: dict[int, list[tuple[str, float | None]]] = {}
    for ev in got[0]:
        paths.setdefault(ev.choice, []).extend((t.text, t.logprob) for t in ev.tokens)
    alone = [(t.text, t.logprob) for ev in got[1] for t in ev.tokens]
    assert sorted(paths) == [0, 1, 2, 3] and len(alone) == 6
    for choice, path in paths.items():
        assert [t for t, _ in path] == [t for t, _ in alone], choice
        for (_, a), (_, b) in zip(path, alone, strict=True):
            assert a is not None and b is not None and abs(a - b) < 1e-5, (choice, path, alone)


def test_the_queue_is_bounded() -> None:
    engine = Engine(tiny(), max_batch=1, max_queue=1)  # not started: nothing leaves
    engine.submit(Request(prompt=[1], max_tokens=5), lambda ev: None)  # fits the batch
    engine.submit(Request(prompt=[1], max_tokens=5), lambda ev: None)  # waits
    try:
        engine.submit(Request(prompt=[1], max_tokens=5), lambda ev: None)
        raise AssertionError("a third request must be refused")
    except Busy as e:
        assert e.retry_after >= 1


def test_stop_strings_are_held_back_until_they_cannot_match() -> None:
    assert held_back("abc<", ("<END>",)) == 1 and held_back("abc<EN", ("<END>",)) == 3
    assert held_back("abc", ("<END>",)) == 0
    ids = encode("one <END> two")
    choice = Choice(Request(prompt=[0], max_tokens=99, stop=("<END>",)), 0, _tokenizer.get())
    pieces = []
    for t in ids:  # as the engine feeds it: until it finishes
        if (ev := choice.add(t, None)) is not None:
            pieces.append(ev)
        if choice.finish:
            break
    assert "".join(ev.text for ev in pieces) == "one " and pieces[-1].finish == "stop"
    assert all("<" not in ev.text for ev in pieces)  # never half of the stop string


def test_pieces_are_whole_characters() -> None:
    ids = encode("héllo 世界 🙂")
    choice = Choice(Request(prompt=[0], max_tokens=len(ids)), 0, _tokenizer.get())
    pieces = [ev.text for t in ids if (ev := choice.add(t, None)) is not None]
    assert "".join(pieces) == "héllo 世界 🙂" and all("\ufffd" not in p for p in pieces)


def test_a_cancelled_request_leaves_at_the_next_step() -> None:
    engine = Engine(tiny(), max_batch=2, max_queue=0)
    engine.start()
    try:
        got: list[Event] = []
        handle = engine.submit(Request(prompt=[1], max_tokens=63), got.append)
        while not got:
            time.sleep(0.001)
        handle.cancel()
        deadline = time.monotonic() + 5
        while engine.load() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.load() == (0, 0)
    finally:
        engine.stop()


def test_the_engine_thread_runs_with_the_threads_it_was_given() -> None:
    # a count other than this process's (a pytest-xdist worker runs one thread)
    given = 2 if torch.get_num_threads() == 1 else 1
    seen: list[int] = []
    engine = Engine(tiny(), max_batch=1, threads=given)
    engine.start()
    try:
        done = threading.Event()

        def emit(ev: Event) -> None:  # on the engine's thread
            seen.append(torch.get_num_threads())
            if ev.finish:
                done.set()

        engine.submit(Request(prompt=encode("x"), max_tokens=2), emit)
        assert done.wait(30)
    finally:
        engine.stop()
    assert seen and set(seen) == {given}
