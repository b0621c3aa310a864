"""The compute loop: prefill chunks interleaved with decode steps, I/O waits off the thread,
per-turn measurements."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.pruning.conftest import media
from videoqa.worker.model.generate import DecodeRequest, ModelRunner
from videoqa.worker.scheduler import YIELD, TurnScheduler, Wait, _Entry


@pytest.fixture(scope="module")
def session_state(tiny_model):
    """``session_state() -> (lm, state, logits)``: a fresh small session of the tiny Qwen2-VL."""
    lm = tiny_model("tiny-qwen2-vl")
    runner = ModelRunner(lm)
    prompt = lm.adapter.prepare(media(4), "what?")

    def make():
        state, logits = runner.prefill(prompt)
        return lm, state, logits

    return make


def run_turns(scheduler: TurnScheduler, turns: list, reserve: int = 0, timeout: float = 60.0) -> list:
    """Submit ``turns`` (callables meter -> generator) together; wait; their (error, value)."""
    outcomes: list = [None] * len(turns)
    done = threading.Event()
    left = [len(turns)]
    lock = threading.Lock()

    def finished_for(i):
        def finished(error, value):
            outcomes[i] = (error, value)
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()

        return finished

    with scheduler._cv:  # submitted at once: admitted in one pass
        for i, turn in enumerate(turns):
            scheduler._waiting.append(_Entry(turn, reserve, finished_for(i)))
        scheduler._cv.notify()
    assert done.wait(timeout)
    return outcomes


def test_prefill_chunks_alternate_with_decode_steps(session_state):
    """A running answer gets a decode step between any two prefill chunks, whichever turns they
    belong to: a new upload delays it by one chunk at most."""
    log: list[str] = []
    lm, state, logits = session_state()

    def answering(meter):
        token = int(torch.argmax(logits))
        for _ in range(12):
            row = yield DecodeRequest(lm, state, token)
            token = int(torch.argmax(row))
            log.append("token")

    def uploading(name: str, chunks: int):
        def turn(meter):
            for _ in range(chunks):
                log.append(name)
                yield YIELD

        return turn

    scheduler = TurnScheduler()
    try:
        outcomes = run_turns(scheduler, [answering, uploading("a", 4), uploading("b", 4)])
    finally:
        scheduler.close()
    assert all(error is None for error, _ in outcomes)
    first_token = log.index("token")
    tail = log[first_token:]
    for before, after in itertools.pairwise(tail):
        assert not (before != "token" and after != "token"), f"two chunks in a row: {log}"
    assert log.count("a") == log.count("b") == 4 and log.count("token") == 12


def test_io_waits_park_a_turn_without_holding_the_loop(session_state):
    """A turn waiting for an I/O stage lets the others run; it then gets the result, or the
    stage's error raised inside it."""
    lm, state, logits = session_state()
    pool = ThreadPoolExecutor(2)
    gate = threading.Event()
    decoded = []

    def slow_restore():
        assert gate.wait(30)
        return "restored"

    def waiting(meter):
        got = yield Wait(pool.submit(slow_restore))
        try:
            yield Wait(pool.submit(lambda: 1 / 0))
        except ZeroDivisionError:
            return got + " and failed save seen"

    def answering(meter):
        token = int(torch.argmax(logits))
        for _ in range(5):
            row = yield DecodeRequest(lm, state, token)
            token = int(torch.argmax(row))
            decoded.append(token)
        gate.set()  # only now may the restore finish: it never held the loop

    scheduler = TurnScheduler()
    try:
        outcomes = run_turns(scheduler, [waiting, answering])
    finally:
        scheduler.close()
        pool.shutdown()
    assert outcomes[0] == (None, "restored and failed save seen")
    assert len(decoded) == 5


def test_each_turn_gets_the_gpu_peak_of_its_own_passes(monkeypatch):
    """The peak counter is reset every pass: a turn's peak is the largest of the passes it was
    active in (other turns' memory included), not the process's since it started."""
    current = {"peak": 0}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: current.update(peak=0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: current["peak"])

    def using(*peaks: int):
        def turn(meter):
            for peak in peaks:
                current["peak"] = peak
                yield YIELD
            return meter

        return turn

    scheduler = TurnScheduler()
    scheduler.measure_devices([torch.device("cuda:0"), torch.device("cpu")])
    try:
        (e1, first), (e2, alongside) = run_turns(scheduler, [using(1 << 20, 9 << 20), using(2 << 20)])
        ((e3, later),) = run_turns(scheduler, [using(3 << 20, 2 << 20)])
    finally:
        scheduler.close()
    assert e1 is e2 is e3 is None
    assert first.gpu_peak_bytes == 9 << 20
    assert alongside.gpu_peak_bytes >= 2 << 20  # its own pass, and those of the turn beside it
    assert later.gpu_peak_bytes == 3 << 20  # after the 9 MiB turn ended: not the process's peak


def test_the_loop_counts_its_model_work(session_state):
    lm, state, logits = session_state()

    def answering(meter):
        token = int(torch.argmax(logits))
        for _ in range(20):
            row = yield DecodeRequest(lm, state, token)
            token = int(torch.argmax(row))

    scheduler = TurnScheduler()
    try:
        run_turns(scheduler, [answering])
        time.sleep(0.05)
    finally:
        scheduler.close()
    assert scheduler.steps == 20 and 0 < scheduler.model_s <= scheduler.busy_s
    assert 0 <= scheduler.outside_model_share < 0.5
