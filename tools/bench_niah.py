#!/usr/bin/env python3
"""Needle-in-a-haystack retrieval with and without KV compression (issue 12's NIAH check).

A sentence with a random passphrase is placed at several depths of SOTU text of several
lengths; the model (Qwen2.5-Coder-0.5B-Instruct by default: 32K context) is asked for it
through its chat template and answers greedily.  A trial counts when the passphrase is in
the answer.  Each KV configuration sees exactly the same prompts.

    python tools/bench_niah.py [--lengths 4096 8192 16384] [--depths 0.25 0.75] [--threads 2]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rq_assets  # noqa: E402
from bench_doc import write_section  # noqa: E402

CONFIGS = [("f16", "f16", None), ("iso3", "iso3", "none"), ("iso3", "iso3", "policy")]


def prompt_for(haystack: str, needle: str) -> str:
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"Read the document and answer the question.\n\n<document>\n{haystack}\n</document>\n\n"
            "What is the secret passphrase mentioned in the document? Reply with the passphrase only."
            "<|im_end|>\n<|im_start|>assistant\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.25, 0.75])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from rotorquant import Llama
    from rotorquant.cli.calibrate import default_text
    from rotorquant.kvpolicy.calibrate import calibrate_model

    model = rq_assets.qwen25_05b()
    words = Path(rq_assets.sotu_text()).read_text(errors="replace").split()
    rng = random.Random(0)
    with Llama(model, vocab_only=True) as vocab, tempfile.TemporaryDirectory() as tmp:
        sample = vocab.tokenize(default_text())[:2048]
        policies = {}
        for ct in sorted({k for k, _, pol in CONFIGS if pol == "policy"}):
            cal = calibrate_model(model, sample, n_threads=args.threads, base_type_k=ct, base_type_v=ct,
                                  budget_bits=3.5 if ct == "iso3" else 4.5)
            policies[ct] = cal.policy.write(Path(tmp) / f"{ct}.kvpolicy.gguf")
        trials = []
        for n in args.lengths:
            for d in args.depths:
                code = f"{rng.choice(['amber', 'cobalt', 'violet', 'silver'])}-{rng.choice(['falcon', 'otter', 'maple'])}-{rng.randint(10, 99)}"
                needle = f"The secret passphrase is {code}."
                budget = n - 80
                lo, hi = 0, len(words)  # the longest prefix of the speech that fits n tokens
                while hi - lo > 16:
                    mid = (lo + hi) // 2
                    if len(vocab.tokenize(prompt_for(" ".join(words[:mid]), needle))) <= budget:
                        lo = mid
                    else:
                        hi = mid
                hay = words[:lo]
                at = int(d * len(hay))
                text = prompt_for(" ".join(hay[:at] + [needle] + hay[at:]), needle)
                trials.append((n, d, code, text))
        rows = []
        for ctk, ctv, pol in CONFIGS:
            kv_policy = None if pol in (None, "none") else policies[ctk]
            hits, t0 = [], time.time()
            for n, d, code, text in trials:
                with Llama(model, n_ctx=n + 64, n_batch=512, cache_type_k=ctk, cache_type_v=ctv,
                           kv_policy=kv_policy, n_threads=args.threads) as llm:
                    answer = llm.generate(text, max_tokens=16, temperature=0)
                hits.append(code in answer)
                print(ctk, ctv, pol, n, d, repr(answer[:40]), hits[-1], flush=True)
            label = f"{ctk}/{ctv}" + ("" if pol is None else " + policy" if pol == "policy" else " plain")
            per_len = {n: sum(h for (m, _, _, _), h in zip(trials, hits) if m == n) for n in args.lengths}
            rows.append(f"| {label} | " + " | ".join(f"{per_len[n]}/{len(args.depths)}" for n in args.lengths)
                        + f" | {sum(hits)}/{len(hits)} | {time.time() - t0:.0f} |")
    head = "| K/V | " + " | ".join(f"{n} tok" for n in args.lengths) + " | all | seconds |"
    lines = [head, "|---|" + "---:|" * (len(args.lengths) + 2)] + rows
    cmd = "python tools/bench_niah.py " + " ".join(sys.argv[1:])
    write_section("bench_niah", [
        "## Needle in a haystack (issue 12)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on 2 CPU cores with `{cmd.strip()}`: Qwen2.5-Coder-0.5B-Instruct "
        "Q4_K_M, a passphrase sentence at depths " + ", ".join(f"{d:g}" for d in args.depths) +
        " of SOTU text filling each context length, asked through the chat template, greedy answer; "
        "the iso3 policy is calibrated on the built-in sample (3.5 bits budget).", ""] + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
