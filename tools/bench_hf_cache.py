#!/usr/bin/env python3
"""Quality, memory and speed of IsoQuantCache / PlanarQuantCache against DynamicCache.

On real trained checkpoints rebuilt from registry GGUFs (rq_assets.hf_checkpoint):

* perplexity on SOTU text, fed through the cache in chunks of 64 tokens (so each chunk
  attends to what the cache stored of the earlier ones; a single forward pass would never
  read the cache), windows of 1024 tokens, every prediction after the first chunk scored;
* greedy agreement with DynamicCache over 256 generated tokens: teacher-forced (the
  share of steps whose top token equals DynamicCache's, fed DynamicCache's tokens) and
  free-running (generated tokens equal to DynamicCache's, and the common prefix);
* stored bytes after the run against DynamicCache's at the same length;
* the residual-window sweep that chose the default ``residual_length`` (bits=3);
* with ``--speed`` on a CUDA machine: decode tok/s at 4K and 32K context.

Prints the tables and replaces this script's section of docs/BENCHMARKS.md.

    python tools/bench_hf_cache.py [--models smollm2 qwen] [--threads 2] [--speed]
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rq_assets  # noqa: E402
from bench_doc import write_section  # noqa: E402

CHUNK, WINDOW, WINDOWS, GEN = 64, 1024, 4, 256
MODELS = {"smollm2": rq_assets.smollm2, "qwen": rq_assets.qwen25_05b}


def cache_kw(model) -> str:
    """transformers 5.25 renamed forward's ``past_key_values`` to ``cache``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def configs():
    from transformers import DynamicCache

    from rotorquant import IsoQuantCache, PlanarQuantCache

    yield "DynamicCache", lambda model: DynamicCache()
    for bits in (4, 3, 2):
        for cls in (IsoQuantCache, PlanarQuantCache):
            yield f"{cls.__name__}(bits={bits})", lambda model, c=cls, b=bits: c(bits=b, config=model.config)


def chunked_perplexity(model, ids, make_cache) -> float:
    import torch

    kw, total, count = cache_kw(model), 0.0, 0
    for w in range(WINDOWS):
        window = ids[w * WINDOW:(w + 1) * WINDOW]
        cache = make_cache(model)
        for start in range(0, len(window), CHUNK):
            piece = window[start:start + CHUNK]
            logits = model(input_ids=piece[None], use_cache=True, **{kw: cache}).logits[0].float()
            targets = window[start + 1:start + CHUNK + 1]
            if start == 0 or not len(targets):
                continue
            logp = torch.log_softmax(logits[:len(targets)], dim=-1)
            total -= logp.gather(1, targets[:, None]).sum().item()
            count += len(targets)
    return math.exp(total / count)


def teacher_forced(model, prompt, reference, make_cache) -> tuple[float, int]:
    """Share of steps whose top token is DynamicCache's, fed DynamicCache's tokens; bytes stored."""
    kw = cache_kw(model)
    cache = make_cache(model)
    logits = model(input_ids=prompt[None], use_cache=True, **{kw: cache}).logits[0, -1]
    hits = 0
    for i, tok in enumerate(reference):
        hits += int(logits.argmax().item() == tok.item())
        if i + 1 < len(reference):
            logits = model(input_ids=tok.view(1, 1), use_cache=True, **{kw: cache}).logits[0, -1]
    return hits / len(reference), stored_bytes(cache)


def stored_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers if getattr(layer, "keys", None) is not None)


def free_running(model, prompt, reference, make_cache) -> tuple[float, int]:
    kw = cache_kw(model)
    out = model.generate(prompt[None], max_new_tokens=len(reference), min_new_tokens=len(reference), do_sample=False,
                         **{kw: make_cache(model)})[0, len(prompt):]
    same = (out == reference).float().mean().item()
    prefix = int((out != reference).nonzero()[0].item()) if (out != reference).any() else len(reference)
    return same, prefix


def quality(name: str, threads: int) -> tuple[list[str], list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    ckpt = rq_assets.hf_checkpoint(MODELS[name]())
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = rq_assets.sotu_text().read_text()
    ids = torch.tensor(tok(text)["input_ids"][:WINDOW * WINDOWS])
    prompt = torch.tensor(tok(text[200_000:])["input_ids"][:200])
    rows, sweep = [], []
    with torch.no_grad():
        from transformers import DynamicCache
        reference = model.generate(prompt[None], max_new_tokens=GEN, min_new_tokens=GEN, do_sample=False,
                                   **{cache_kw(model): DynamicCache()})[0, len(prompt):]
        base_ppl = base_bytes = None
        for label, make in configs():
            t0 = time.time()
            ppl = chunked_perplexity(model, ids, make)
            agree, nbytes = teacher_forced(model, prompt, reference, make)
            same, prefix = free_running(model, prompt, reference, make)
            if base_ppl is None:
                base_ppl, base_bytes = ppl, nbytes
            rows.append(f"| {name} | {label} | {ppl:.3f} | {ppl / base_ppl:.4f} | {100 * agree:.1f} | "
                        f"{100 * same:.1f} | {prefix} | {nbytes / base_bytes:.4f} |")
            print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
        for residual in (0, 16, 64, 128, 256):
            from rotorquant import IsoQuantCache
            make = lambda model, r=residual: IsoQuantCache(bits=3, config=model.config, residual_length=r)
            ppl = chunked_perplexity(model, ids, make)
            agree, nbytes = teacher_forced(model, prompt, reference, make)
            sweep.append(f"| {name} | {residual} | {ppl:.3f} | {ppl / base_ppl:.4f} | {100 * agree:.1f} | "
                         f"{nbytes / base_bytes:.4f} |")
            print(sweep[-1], flush=True)
    return rows, sweep


def speed(depths=(4096, 32768), steps: int = 64) -> list[str]:
    """Decode tok/s on CUDA, a random-weight Llama-3.1-8B-shaped 4-layer model in bf16
    (attention and cache shapes of the real one; fewer layers keep it in memory at 32K)."""
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from rotorquant import IsoQuantCache

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40000)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    kw = cache_kw(model)
    rows = []
    with torch.no_grad():
        for depth in depths:
            base = None
            for label, make in (("DynamicCache", lambda: DynamicCache()),
                                ("IsoQuantCache(bits=4)", lambda: IsoQuantCache(bits=4)),
                                ("IsoQuantCache(bits=3)", lambda: IsoQuantCache(bits=3))):
                cache = make()
                ids = torch.randint(0, cfg.vocab_size, (1, depth), device="cuda")
                for start in range(0, depth, 2048):
                    model(input_ids=ids[:, start:start + 2048], use_cache=True, **{kw: cache})
                tok = ids[:, -1:]
                torch.cuda.synchronize()
                t0 = time.time()
                for _ in range(steps):
                    model(input_ids=tok, use_cache=True, **{kw: cache})
                torch.cuda.synchronize()
                tps = steps / (time.time() - t0)
                base = base or tps
                rows.append(f"| {depth} | {label} | {tps:.1f} | {tps / base:.2f} | {stored_bytes(cache) / 2**20:.0f} |")
                print(rows[-1], flush=True)
                del cache
                torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["smollm2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", action="store_true", help="also measure decode speed on CUDA")
    args = ap.parse_args()
    rows, sweep = [], []
    for name in args.models:
        r, s = quality(name, args.threads)
        rows += r
        sweep += s
    import torch
    import transformers
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `python tools/bench_hf_cache.py --models "
             f"{' '.join(args.models)}` (torch {torch.__version__}, transformers {transformers.__version__}, "
             f"CPU, f32 checkpoints rebuilt from the registry GGUFs).  Perplexity: SOTU text, {WINDOWS} windows "
             f"of {WINDOW} tokens fed in chunks of {CHUNK}, predictions after the first chunk; agreement over "
             f"{GEN} greedy tokens after a 200-token SOTU prompt; bytes: stored states after prompt + {GEN} "
             "tokens, against DynamicCache's (f32 states).  Default residual_length (128 tokens kept in the "
             "model's precision).", "",
             "| model | cache | PPL | vs Dynamic | teacher-forced top-1 % | free-run same % | common prefix | "
             "bytes vs Dynamic |", "|---|---|---|---|---|---|---|---|", *rows, "",
             "Residual window sweep (IsoQuantCache(bits=3)).  Quality rises with every token kept exact, and "
             "in these short runs the window is a large share of the cache (bytes column); its cost is fixed "
             "(128 tokens per layer: 0.4 % of a 32K context), so the default of 128 takes most of the top-1 "
             "gain at a cost that vanishes at the lengths the cache is for:", "",
             "| model | residual_length | PPL | vs Dynamic | teacher-forced top-1 % | bytes vs Dynamic |",
             "|---|---|---|---|---|---|", *sweep]
    if args.speed:
        lines += ["", "Decode speed on CUDA (Llama-3.1-8B attention shape, 4 layers, bf16, random weights):", "",
                  "| depth | cache | tok/s | vs Dynamic | stored MiB |", "|---|---|---|---|---|", *speed()]
    write_section("hf-cache-quality", ["## IsoQuantCache / PlanarQuantCache (transformers)", "", *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
