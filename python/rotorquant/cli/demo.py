"""``rq-run demo``: generate with a quantized KV cache on the embedded model.

Prints the completion, prompt and generation speed, and the KV cache's bytes
next to what an f16 cache of the same context would take (both measured from
llama.cpp's own memory accounting, not computed).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

DEFAULT_PROMPT = "The three most important ideas in the history of science are"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rq-run demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="a GGUF file (default: the embedded Gemma-3-270M)")
    ap.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    # iso4/iso4: 4.25 bits per value, perplexity +7% on this model (docs/BENCHMARKS.md)
    ap.add_argument("-ctk", "--cache-type-k", default="iso4")
    ap.add_argument("-ctv", "--cache-type-v", default="iso4")
    ap.add_argument("--temp", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    return ap


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("rotorquant.llama").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    from .. import Llama, RotorQuantError, cache_types
    from ..demo_model import gemma_path

    try:
        ctk, ctv = cache_types.get(args.cache_type_k), cache_types.get(args.cache_type_v)
        model = args.model or gemma_path()
        print(f"model: {model}", flush=True)
        with Llama(model, n_ctx=args.ctx_size, cache_type_k=ctk, cache_type_v=ctv) as llm:
            print(f"KV cache: K {ctk} ({ctk.bits_per_element:.2f} bits), "
                  f"V {ctv} ({ctv.bits_per_element:.2f} bits), {llm.n_ctx} tokens of context\n")
            print(args.prompt, end="", flush=True)
            t0 = time.perf_counter()
            for piece in llm.generate(args.prompt, max_tokens=args.max_tokens,
                                      temperature=args.temp, seed=args.seed, stream=True):
                print(piece, end="", flush=True)
            wall = time.perf_counter() - t0
            perf, kv = llm.perf(), llm.memory_bytes()["context"]
        with Llama(model, n_ctx=args.ctx_size) as f16:
            kv_f16 = f16.memory_bytes()["context"]
    except (ValueError, OSError, RotorQuantError) as exc:
        print(f"\nrq-run demo: error: {exc}", file=sys.stderr)
        return 1

    def rate(n, ms):
        return f"{1000.0 * n / ms:.1f} tok/s" if ms > 0 else "n/a"

    print("\n")
    print(f"prompt:     {perf['prompt_tokens']} tokens, {rate(perf['prompt_tokens'], perf['prompt_ms'])}")
    print(f"generation: {perf['generated_tokens']} tokens, "
          f"{rate(perf['generated_tokens'], perf['generate_ms'])} (wall {wall:.2f} s)")
    print(f"KV cache:   {_mib(kv)} with {ctk}/{ctv} vs {_mib(kv_f16)} with f16/f16 "
          f"({kv / kv_f16:.2f}x)")
    return 0
