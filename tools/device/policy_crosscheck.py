#!/usr/bin/env python3
"""CPU vs CUDA logits under one KV policy (issue 12: the CUDA path applies the same policy).

K offsets are measured by the capture (on the GPU), then a policy with K centering, the
Hadamard on, and layer 0's K/V raised to f16 is applied to a q8_0 cache (on the GPU when
layers are offloaded) and to an iso3 cache (kept on the CPU by patch 0005).  For each, the
normalised MSE between the CPU-only and the all-offloaded logits is printed next to the
same figure without a policy: the policy must not widen the CPU/CUDA gap.

    python3 tools/device/policy_crosscheck.py MODEL.gguf [OUT_DIR]
"""
import sys
from pathlib import Path

# rotorquant before numpy: on the H200 machine (CUDA build, numpy 2.5.2 with its bundled
# OpenBLAS) importing numpy first made every model load segfault, even with no GPU visible
from rotorquant import Llama  # noqa: I001
from rotorquant.kvpolicy.capture import capture
from rotorquant.kvpolicy.policy import KVPolicy

import numpy as np


def logits(model, tokens, ngl, **kw):
    with Llama(model, n_ctx=len(tokens) + 16, n_batch=len(tokens), n_gpu_layers=ngl, flash_attn="on", **kw) as llm:
        llm.eval(tokens)
        return np.array(llm.logits(), dtype=np.float64)


def nmse(a, b):
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def main() -> int:
    model, out = sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else ".")
    tokens = list(range(100, 612))
    layers, n_layer = capture(model, tokens, n_gpu_layers=99)
    rows = ["| cache | policy | NMSE CPU vs CUDA | NMSE policy vs none (CPU) |", "|---|---|---:|---:|"]
    for base in ("q8_0", "iso3"):
        pol = KVPolicy(n_layer=n_layer, base_type_k=base, base_type_v=base, attn_rot_k=True,
                       type_k=["f16"] + [None] * (n_layer - 1), type_v=["f16"] + [None] * (n_layer - 1),
                       k_center=[l.k.mean(axis=0).reshape(-1) for l in layers])
        path = pol.write(out / f"{base}.kvpolicy.gguf")
        kw = dict(cache_type_k=base, cache_type_v=base)
        cpu_none, gpu_none = logits(model, tokens, 0, kv_policy=None, **kw), logits(model, tokens, 99, kv_policy=None, **kw)
        cpu_pol, gpu_pol = logits(model, tokens, 0, kv_policy=path, **kw), logits(model, tokens, 99, kv_policy=path, **kw)
        rows.append(f"| {base} | none | {nmse(gpu_none, cpu_none):.2e} | |")
        rows.append(f"| {base} | centering + Hadamard + layer 0 f16 | {nmse(gpu_pol, cpu_pol):.2e} | {nmse(cpu_pol, cpu_none):.2e} |")
    print("\n".join(rows))
    (out / "policy_crosscheck.md").write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
