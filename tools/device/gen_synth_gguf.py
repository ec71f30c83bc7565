#!/usr/bin/env python3
"""Write a random-weight F16 GGUF with a real model's shape, for speed measurements.

Weight values never change the speed of a dense model, so one block of N(0, 0.02) noise is
tiled over every tensor (seconds instead of minutes for 8B parameters); quantize afterwards
with llama-quantize.  The vocabulary is 'none', which llama-bench accepts.

    python tools/device/gen_synth_gguf.py llama31-8b out.gguf [--gguf-py DIR]
Shapes: llama31-8b (the RotorQuant headline model), qwen35-attn (Qwen3.5-397B's attention:
head_dim 256, 32 query / 2 KV heads, with Llama-8B-sized dense layers), llama-1b, tiny.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

SHAPES = {
    "llama31-8b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
                       n_ff=14336, n_vocab=128256, rope_theta=500000.0, n_ctx=131072),
    "qwen35-attn": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=2, head_dim=256,
                        n_ff=14336, n_vocab=128256, rope_theta=10000000.0, n_ctx=262144),
    "llama-1b": dict(n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, head_dim=64,
                     n_ff=8192, n_vocab=128256, rope_theta=500000.0, n_ctx=131072),
    "tiny": dict(n_layer=2, n_embd=256, n_head=2, n_head_kv=1, head_dim=128,
                 n_ff=512, n_vocab=1000, rope_theta=10000.0, n_ctx=4096),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--gguf-py", default=None, help="folder of gguf-py to import (e.g. the upstream tree's)")
    a = ap.parse_args()
    if a.gguf_py:
        sys.path.insert(0, a.gguf_py)
    import gguf

    s = SHAPES[a.shape]
    E, F, V, hd = s["n_embd"], s["n_ff"], s["n_vocab"], s["head_dim"]
    q, kv = hd * s["n_head"], hd * s["n_head_kv"]
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"synthetic-{a.shape}")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(E)
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(F)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(hd)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("none")

    noise = (np.random.default_rng(0).standard_normal(1 << 20, dtype=np.float32) * 0.02).astype(np.float16)

    def rnd(*shape):
        return np.resize(noise, shape)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", rnd(V, E))
    w.add_tensor("output_norm.weight", ones(E))
    w.add_tensor("output.weight", rnd(V, E))
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(E))
        w.add_tensor(p + "attn_q.weight", rnd(q, E))
        w.add_tensor(p + "attn_k.weight", rnd(kv, E))
        w.add_tensor(p + "attn_v.weight", rnd(kv, E))
        w.add_tensor(p + "attn_output.weight", rnd(E, q))
        w.add_tensor(p + "ffn_norm.weight", ones(E))
        w.add_tensor(p + "ffn_gate.weight", rnd(F, E))
        w.add_tensor(p + "ffn_up.weight", rnd(F, E))
        w.add_tensor(p + "ffn_down.weight", rnd(E, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


if __name__ == "__main__":
    main()
