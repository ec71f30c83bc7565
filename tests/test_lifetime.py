"""Concurrency and lifetime of a Llama: concurrent calls are serialized, Ctrl-C stops a long
decode and leaves the object usable, closing is final, and objects do not leak memory."""
import os
import signal
import threading

import pytest

from rotorquant import Llama
from rotorquant._native import lib

GREEDY = dict(temperature=0)


def test_concurrent_generations_are_serialized_not_corrupted(tiny_model):
    with Llama(tiny_model, n_ctx=256, n_threads=1) as llm:
        want = {p: llm.generate(p, max_tokens=16, **GREEDY) for p in ("the", "a", "hello", "of")}
        got, errors = {}, []

        def worker(prompt):
            try:
                for _ in range(5):
                    got.setdefault(prompt, set()).add(llm.generate(prompt, max_tokens=16, **GREEDY))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(p,)) for p in want]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert got == {p: {text} for p, text in want.items()}


def test_a_call_from_another_thread_ends_an_unfinished_stream(tiny_model):
    with Llama(tiny_model, n_ctx=256) as llm:
        stream = llm.generate("the", max_tokens=50, stream=True, **GREEDY)
        next(stream)
        t = threading.Thread(target=llm.generate, args=("a",), kwargs=dict(max_tokens=2))
        t.start()
        t.join()
        assert list(stream) == []


def evaluated(llm) -> int:
    return lib.llama_memory_seq_pos_max(lib.llama_get_memory(llm._ctx), 0) + 1


def test_ctrl_c_stops_a_long_prompt_mid_decode_and_the_object_stays_usable(smollm2_model):
    with Llama(smollm2_model, n_ctx=4096, n_batch=4096, n_threads=2) as llm:
        tokens = (llm.tokenize("The history of the river valley. " * 400))[:4000]
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            llm.eval(tokens)
        timer.join()
        # llama.cpp stopped inside the 4000-token call: only whole ubatches before the
        # interrupt stay in the cache
        assert evaluated(llm) < len(tokens)
        assert llm.generate("The capital of France is", max_tokens=4, **GREEDY)


def test_use_after_close_raises_a_clear_error(tiny_model):
    llm = Llama(tiny_model, n_ctx=64)
    stream = llm.generate("the", max_tokens=10, stream=True)
    llm.close()
    assert list(stream) == []
    for call in (lambda: llm.generate("x"), lambda: llm.eval([1]), lambda: llm.logits(),
                 lambda: llm.tokenize("x"), lambda: llm.create_completion("x"), lambda: llm.n_ctx):
        with pytest.raises(ValueError, match="closed"):
            call()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_a_thousand_create_destroy_cycles_do_not_leak(tiny_model):
    def cycle():
        with Llama(tiny_model, n_ctx=64, n_threads=1) as llm:
            llm.eval(llm.tokenize("hello"))

    for _ in range(50):  # allocator pools and caches reach their steady size
        cycle()
    before = rss_bytes()
    for _ in range(1000):
        cycle()
    assert rss_bytes() - before <= 16 * 2**20
