#!/usr/bin/env python3
"""Emit the C source of rotorquant's cffi API-mode extension.

CMake runs this at build time and compiles the result against the real
llama.cpp headers (see csrc/cdef/llama_api.h for why API mode).  Emitting C
instead of letting cffi compile keeps one compiler, one set of flags and one
RPATH policy: CMake's.
"""
import argparse
from pathlib import Path

import cffi

# Headers the generated module includes, in this order.
INCLUDES = ("llama.h", "ggml.h", "ggml-backend.h", "ggml-cpu.h", "ggml-rpc.h", "rq_shim.h", "rq_chat.h", "rq-cpu.h", "mtmd.h", "mtmd-helper.h")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cdef", type=Path, required=True)
    ap.add_argument("--module", required=True, help="dotted module name, e.g. rotorquant._ffi")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    ffi = cffi.FFI()
    ffi.cdef(args.cdef.read_text())
    ffi.set_source(args.module, "".join(f'#include "{h}"\n' for h in INCLUDES))
    tmp = args.out.with_name(args.out.name + ".tmp")
    ffi.emit_c_code(str(tmp))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
