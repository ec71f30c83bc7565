#!/usr/bin/env python3
"""Write a random-weight F16 GGUF with a real model's shape, for speed measurements.

Weight values never change the speed of a dense model, so one block of N(0, 0.02) noise is
tiled over every tensor (seconds instead of minutes for 8B parameters); quantize afterwards
with llama-quantize.  The vocabulary is 'none', which llama-bench accepts.  Tensors are
generated one at a time while writing, so memory stays at the largest tensor (~1 GB).

    python tools/device/gen_synth_gguf.py llama31-8b out.gguf [--gguf-py DIR] [--n-layer N]
Shapes: llama31-8b (the RotorQuant headline model), qwen35-attn (Qwen3.5-397B's attention:
head_dim 256, 32 query / 2 KV heads, with Llama-8B-sized dense layers), llama-1b, tiny;
arch "qwen35" (upstream LLM_ARCH_QWEN35, the dense hybrid Qwen3.5: every 4th layer is full
attention, the others gated-delta-net linear attention): qwen35-hybrid (Qwen3.5-397B's
attention and GDN dims, dense 14336 FFN instead of the MoE, 32 layers = 8 full-attention),
qwen35-tiny (the same structure at 256 wide, 4 layers); arch "qwen35moe": qwen35-397b
(Qwen3.5-397B-A17B: 60 layers, 15 of them full attention, 512 experts of which 10 are
used, a shared expert, vocabulary 248,320).  --n-layer overrides the layer count (a quick
header check of a big shape), --n-expert the expert count.

--shape-only writes the header and tensor infos only, with the data region a hole (a
sparse file: no disk space, no time): llama.cpp's dry run (`rq-run plan`) reads nothing
else, so a 220 GB model can be planned on any machine; --type then sets the weight type
of the matrices (q4_k, q8_0, f16).

    python tools/device/gen_synth_gguf.py qwen35-397b q35-397b.gguf --shape-only --type q4_k
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
    # qwen35: n_rot = head_dim / 4 (partial_rotary_factor 0.25); rope_sections are the
    # interleaved-MRoPE [t, h, w, e] pair counts, summing to n_rot / 2 (Qwen3.5: [11, 11, 10]).
    # GDN: gdn_k_heads (ssm.group_count) / gdn_v_heads (ssm.time_step_rank) of gdn_head_dim
    # (ssm.state_size; upstream's loader uses it for both the K and the V head dim).
    "qwen35-hybrid": dict(arch="qwen35", n_layer=32, n_embd=4096, n_head=32, n_head_kv=2,
                          head_dim=256, n_rot=64, rope_sections=[11, 11, 10, 0],
                          full_attn_interval=4, gdn_k_heads=16, gdn_v_heads=64,
                          gdn_head_dim=128, conv_kernel=4, n_ff=14336, n_vocab=128256,
                          rope_theta=10000000.0, n_ctx=262144),
    # qwen35moe: the hybrid layers of qwen35 with a mixture of experts (+ one shared expert)
    # for the FFN; n_ff is the expert FFN width
    "qwen35-397b": dict(arch="qwen35moe", n_layer=60, n_embd=4096, n_head=32, n_head_kv=2,
                        head_dim=256, n_rot=64, rope_sections=[11, 11, 10, 0],
                        full_attn_interval=4, gdn_k_heads=16, gdn_v_heads=64,
                        gdn_head_dim=128, conv_kernel=4, n_ff=1024, n_ff_shexp=1024,
                        n_expert=512, n_expert_used=10, n_vocab=248320,
                        rope_theta=10000000.0, n_ctx=262144),
    "qwen35-tiny": dict(arch="qwen35", n_layer=4, n_embd=256, n_head=4, n_head_kv=2,
                        head_dim=64, n_rot=16, rope_sections=[3, 3, 2, 0],
                        full_attn_interval=4, gdn_k_heads=2, gdn_v_heads=4,
                        gdn_head_dim=64, conv_kernel=4, n_ff=512, n_vocab=1000,
                        rope_theta=10000000.0, n_ctx=4096),
}


def tensor_specs(s: dict) -> list:
    """(name, numpy shape, fill) for every tensor; fill is 'rnd' (F16 noise), 'ones',
    'a' (GDN decay: -exp(A_log), negative), 'conv' (F32 noise) or 'dt' (dt bias, ones).
    1-D tensors and the conv kernel are F32, as upstream's converter writes them."""
    E, F, V, hd = s["n_embd"], s["n_ff"], s["n_vocab"], s["head_dim"]
    q, kv = hd * s["n_head"], hd * s["n_head_kv"]
    t = [("token_embd.weight", (V, E), "rnd"), ("output_norm.weight", (E,), "ones"),
         ("output.weight", (V, E), "rnd")]
    qwen35 = s.get("arch") in ("qwen35", "qwen35moe")
    moe = s.get("arch") == "qwen35moe"
    if qwen35:
        dk, hv, nv = s["gdn_head_dim"] * s["gdn_k_heads"], s["gdn_head_dim"], s["gdn_v_heads"]
        dv = hv * nv
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        t.append((p + "attn_norm.weight", (E,), "ones"))
        if not qwen35:
            t += [(p + "attn_q.weight", (q, E), "rnd"), (p + "attn_k.weight", (kv, E), "rnd"),
                  (p + "attn_v.weight", (kv, E), "rnd"), (p + "attn_output.weight", (E, q), "rnd"),
                  (p + "ffn_norm.weight", (E,), "ones")]
        elif (i + 1) % s["full_attn_interval"] == 0:
            # full attention: attn_q holds query and output gate, per head [q | gate]
            t += [(p + "attn_q.weight", (2 * q, E), "rnd"), (p + "attn_k.weight", (kv, E), "rnd"),
                  (p + "attn_v.weight", (kv, E), "rnd"), (p + "attn_output.weight", (E, q), "rnd"),
                  (p + "attn_q_norm.weight", (hd,), "ones"), (p + "attn_k_norm.weight", (hd,), "ones"),
                  (p + "post_attention_norm.weight", (E,), "ones")]
        else:
            # gated delta net: fused q|k|v projection, z gate, conv over q|k|v, per-V-head a/dt/alpha/beta
            t += [(p + "attn_qkv.weight", (2 * dk + dv, E), "rnd"), (p + "attn_gate.weight", (dv, E), "rnd"),
                  (p + "ssm_conv1d.weight", (2 * dk + dv, s["conv_kernel"]), "conv"),
                  (p + "ssm_dt.bias", (nv,), "dt"), (p + "ssm_a", (nv,), "a"),
                  (p + "ssm_beta.weight", (nv, E), "rnd"), (p + "ssm_alpha.weight", (nv, E), "rnd"),
                  (p + "ssm_norm.weight", (hv,), "ones"), (p + "ssm_out.weight", (E, dv), "rnd"),
                  (p + "post_attention_norm.weight", (E,), "ones")]
        if moe:
            X, S = s["n_expert"], s["n_ff_shexp"]
            t += [(p + "ffn_gate_inp.weight", (X, E), "conv"),
                  (p + "ffn_gate_exps.weight", (X, F, E), "rnd"), (p + "ffn_up_exps.weight", (X, F, E), "rnd"),
                  (p + "ffn_down_exps.weight", (X, E, F), "rnd"),
                  (p + "ffn_gate_inp_shexp.weight", (E,), "conv"),
                  (p + "ffn_gate_shexp.weight", (S, E), "rnd"), (p + "ffn_up_shexp.weight", (S, E), "rnd"),
                  (p + "ffn_down_shexp.weight", (E, S), "rnd")]
        else:
            t += [(p + "ffn_gate.weight", (F, E), "rnd"), (p + "ffn_up.weight", (F, E), "rnd"),
                  (p + "ffn_down.weight", (E, F), "rnd")]
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--gguf-py", default=None, help="folder of gguf-py to import (e.g. the upstream tree's)")
    ap.add_argument("--n-layer", type=int, default=None, help="override the shape's layer count")
    ap.add_argument("--n-expert", type=int, default=None, help="override an MoE shape's expert count")
    ap.add_argument("--shape-only", action="store_true",
                    help="header and tensor infos only, the data a hole (a sparse file, for rq-run plan)")
    ap.add_argument("--type", choices=("f16", "q8_0", "q4_k"), default="f16",
                    help="weight type of the matrices with --shape-only (default f16)")
    a = ap.parse_args()
    if a.type != "f16" and not a.shape_only:
        ap.error("--type needs --shape-only (quantize a real file with llama-quantize)")
    if a.gguf_py:
        sys.path.insert(0, a.gguf_py)
    import gguf

    s = dict(SHAPES[a.shape])
    if a.n_layer:
        s["n_layer"] = a.n_layer
    if a.n_expert:
        s["n_expert"] = a.n_expert
        s["n_expert_used"] = min(s["n_expert_used"], a.n_expert)
    arch = s.get("arch", "llama")
    hd = s["head_dim"]
    w = gguf.GGUFWriter(a.out, arch)
    w.add_name(f"synthetic-{a.shape}")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(1e-6 if arch.startswith("qwen35") else 1e-5)
    w.add_vocab_size(s["n_vocab"])
    w.add_rope_dimension_count(s.get("n_rot", hd))
    if arch == "qwen35moe":
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
        w.add_expert_feed_forward_length(s["n_ff"])
        w.add_expert_shared_feed_forward_length(s["n_ff_shexp"])
    if arch.startswith("qwen35"):
        # all required by upstream's qwen35 loader except full_attention_interval (default 4)
        w.add_rope_dimension_sections(s["rope_sections"])
        w.add_full_attention_interval(s["full_attn_interval"])
        w.add_ssm_conv_kernel(s["conv_kernel"])
        w.add_ssm_state_size(s["gdn_head_dim"])
        w.add_ssm_group_count(s["gdn_k_heads"])
        w.add_ssm_time_step_rank(s["gdn_v_heads"])
        w.add_ssm_inner_size(s["gdn_head_dim"] * s["gdn_v_heads"])
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_M}[a.type])
    w.add_tokenizer_model("none")

    noise = (np.random.default_rng(0).standard_normal(1 << 20, dtype=np.float32) * 0.02).astype(np.float16)

    def make(shape, fill):
        if fill == "rnd":
            return np.resize(noise, shape)
        if fill == "conv":
            return np.resize(noise, shape).astype(np.float32)
        if fill == "a":  # A in [1, 16] like HF's A_log init, stored as -A
            return -np.linspace(1.0, 16.0, shape[0], dtype=np.float32)
        return np.ones(shape, dtype=np.float32)  # norms, dt bias

    specs = tensor_specs(s)
    quant = {"q8_0": (gguf.GGMLQuantizationType.Q8_0, 32, 34), "q4_k": (gguf.GGMLQuantizationType.Q4_K, 256, 144)}
    sizes = []
    for name, shape, fill in specs:
        dt = np.float16 if fill == "rnd" else np.float32
        if fill == "rnd" and a.type in quant:
            qtype, block, block_bytes = quant[a.type]
            assert shape[-1] % block == 0, (name, shape)
            sizes.append(int(np.prod(shape)) // block * block_bytes)
            w.add_tensor_info(name, shape, np.dtype(np.float32), sizes[-1], raw_dtype=qtype)
        else:
            sizes.append(int(np.prod(shape)) * np.dtype(dt).itemsize)
            w.add_tensor_info(name, shape, np.dtype(dt), sizes[-1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if a.shape_only:  # the data region as a hole of its full size
        fout = w.fout[0]
        start = gguf.GGUFWriter.ggml_pad(fout.tell(), w.data_alignment)
        fout.truncate(start + sum(gguf.GGUFWriter.ggml_pad(n, w.data_alignment) for n in sizes))
        fout.close()
        w.fout = None
        return
    for name, shape, fill in specs:
        w.write_tensor_data(make(shape, fill))
    w.close()


if __name__ == "__main__":
    main()
