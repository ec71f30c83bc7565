#!/usr/bin/env python3
"""Peak memory of rq-convert on a generated multi-GB checkpoint.

Writes a random-weight LlamaForCausalLM checkpoint (F16 safetensors, the real SmolLM2
tokenizer so the converter accepts it) of about --gib GiB, converts it with rq-convert
under `/usr/bin/time -v`, and records peak RSS against the checkpoint size in
docs/BENCHMARKS.md.  The converter is lazy: its peak should follow the largest tensor,
not the model.

    python tools/bench_convert_memory.py [--gib 3] [--keep]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import rq_assets  # noqa: E402
from bench_doc import write_section  # noqa: E402


def write_checkpoint(out: Path, gib: float) -> tuple[int, int]:
    from safetensors.numpy import save_file

    from hf_checkpoints import smollm2_tokenizer

    hidden, ff, vocab = 2048, 8192, 49152
    per_layer = (4 * hidden * hidden + 3 * hidden * ff) * 2
    layers = max(1, int((gib * 2**30 - 2 * vocab * hidden * 2) // per_layer))
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    largest = 0

    def rnd(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    shards, weight_map = [], {}
    common = {"model.embed_tokens.weight": rnd(vocab, hidden), "lm_head.weight": rnd(vocab, hidden),
              "model.norm.weight": np.ones(hidden, np.float16)}
    shards.append(common)
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({p + "self_attn.q_proj.weight": rnd(hidden, hidden), p + "self_attn.k_proj.weight": rnd(hidden, hidden),
                       p + "self_attn.v_proj.weight": rnd(hidden, hidden), p + "self_attn.o_proj.weight": rnd(hidden, hidden),
                       p + "mlp.gate_proj.weight": rnd(ff, hidden), p + "mlp.up_proj.weight": rnd(ff, hidden),
                       p + "mlp.down_proj.weight": rnd(hidden, ff),
                       p + "input_layernorm.weight": np.ones(hidden, np.float16),
                       p + "post_attention_layernorm.weight": np.ones(hidden, np.float16)})
    total = 0
    for n, tensors in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / name))
        for k, v in tensors.items():
            weight_map[k] = name
            total += v.nbytes
            largest = max(largest, v.nbytes)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 16, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16", "tie_word_embeddings": False}))
    smollm2_tokenizer(out, rq_assets.smollm2())
    return total, largest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=3.0)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rq-convert-mem-"))
    try:
        t0 = time.time()
        total, largest = write_checkpoint(work / "ckpt", a.gib)
        print(f"checkpoint: {total / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB ({time.time() - t0:.0f} s)")
        t0 = time.time()
        proc = subprocess.run(["/usr/bin/time", "-v", "rq-convert", str(work / "ckpt"), "-o", str(work / "out.gguf"),
                               "--outtype", "f16"], capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-3000:])
            return 1
        rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        rows = ["| checkpoint | largest tensor | output | peak RSS | peak / checkpoint | wall |", "|---:|---:|---:|---:|---:|---:|",
                f"| {total / 2**30:.2f} GiB | {largest / 2**20:.0f} MiB | {(work / 'out.gguf').stat().st_size / 2**30:.2f} GiB "
                f"| {rss_kib / 2**20:.2f} GiB | {rss_kib * 1024 / total:.2f} | {wall:.0f} s |"]
        print("\n".join(rows))
        cmd = "python tools/bench_convert_memory.py " + " ".join(sys.argv[1:])
        write_section("bench_convert_memory", [
            "## rq-convert peak memory", "",
            f"A generated F16 LlamaForCausalLM checkpoint converted to f16 with `rq-convert` under "
            f"`/usr/bin/time -v` (max RSS of the process tree's largest member); `{cmd.strip()}`, "
            f"{time.strftime('%Y-%m-%d')}.", ""] + rows)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
