"""``rq-run plan``: the memory a model needs per device at a context size and KV cache
types (weights, KV cache, recurrent state, compute buffers), and whether it fits.

The figures come from llama.cpp's own dry run of the load (nothing is allocated, only
the GGUF header is read), so they are what the real load allocates.  Several cache types
(``-ctk f16,iso3``) give one table each, for comparison.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rq-run plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a GGUF file")
    ap.add_argument("-c", "--ctx-size", type=int, default=4096, help="whole context in tokens (default 4096)")
    ap.add_argument("-ctk", "--cache-type-k", default="f16",
                    help="K cache type, or a comma-separated list to compare (default f16)")
    ap.add_argument("-ctv", "--cache-type-v", default=None,
                    help="V cache type(s) (default: the same as -ctk)")
    ap.add_argument("-np", "--parallel", type=int, default=1, help="sequences sharing the context (default 1)")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1, help="layers on GPUs (default -1: all)")
    ap.add_argument("-b", "--batch-size", type=int, default=2048)
    ap.add_argument("-ub", "--ubatch-size", type=int, default=512)
    ap.add_argument("-fa", "--flash-attn", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--kv-policy", default="auto", help="auto (the model's policy file if any), none, or FILE")
    ap.add_argument("--n-cpu-moe", type=int, default=0, help="keep the experts of the first N layers in RAM")
    ap.add_argument("--rpc", default=None, help="comma-separated RPC servers (host:port)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    return ap


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("rotorquant.llama").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    from ..errors import RotorQuantError
    from ..plan import plan

    ks = args.cache_type_k.split(",")
    vs = (args.cache_type_v or args.cache_type_k).split(",")
    if len(vs) != len(ks):
        print("rq-run plan: error: -ctk and -ctv list different numbers of types", file=sys.stderr)
        return 2
    plans = []
    try:
        for k, v in zip(ks, vs):
            plans.append(plan(args.model, n_ctx=args.ctx_size, cache_type_k=k, cache_type_v=v,
                              n_parallel=args.parallel, n_gpu_layers=args.n_gpu_layers, n_batch=args.batch_size,
                              n_ubatch=args.ubatch_size, flash_attn=args.flash_attn,
                              kv_policy=None if args.kv_policy == "none" else args.kv_policy,
                              n_cpu_moe=args.n_cpu_moe, rpc_servers=args.rpc.split(",") if args.rpc else None))
    except (ValueError, OSError, RotorQuantError) as exc:
        print(f"rq-run plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"model": p.model_path, "n_ctx": p.n_ctx, "n_parallel": p.n_parallel,
                           "cache_type_k": p.cache_type_k, "cache_type_v": p.cache_type_v, "fits": p.fits,
                           "devices": [{"name": d.name, "model": d.model, "kv": d.kv, "recurrent": d.recurrent,
                                        "compute": d.compute, "needed": d.needed, "free": d.free, "total": d.total,
                                        "fits": d.fits} for d in p.devices]} for p in plans], indent=2))
    else:
        print("\n\n".join(p.table() for p in plans))
    return 0 if all(p.fits for p in plans) else 1
