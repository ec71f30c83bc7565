"""One model, several threads: calls on a Llama are serialized by its lock (never mixed
up), and Ctrl-C stops a generation between two graph nodes, leaving the object usable.
Here a timer plays the part of the user pressing Ctrl-C during a long generation.

    python examples/threads.py [MODEL.gguf]          (default: the embedded Gemma-3-270M)
"""
import signal
import sys
import threading
import time

from rotorquant import Llama


def main(model: str) -> None:
    with Llama(model, n_ctx=2048, cache_type_k="iso3", cache_type_v="iso3") as llm:
        replies = {}

        def ask(name: str, prompt: str) -> None:
            replies[name] = llm.generate(prompt, max_tokens=12, temperature=0)

        workers = [threading.Thread(target=ask, args=(f"t{i}", p))
                   for i, p in enumerate(["The sky is", "Water boils at", "The capital of Italy is"])]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        for name, text in sorted(replies.items()):
            print(f"{name}: {text!r}")

        def interrupt(*_):
            raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # "Ctrl-C" 0.3 s into the generation
        start = time.monotonic()
        try:
            llm.generate("Once upon a time", max_tokens=100000, temperature=0.8)
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - start:.2f} s")
        print("still usable:", repr(llm.generate("One, two,", max_tokens=6, temperature=0)))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
