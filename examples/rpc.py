"""Layers on another process (or machine) through llama.cpp's RPC backend, with an iso3
KV cache living there too.  Here the server is started on loopback; on a real cluster run
`rq-run rpc-server` (or the bundled ggml-rpc-server) on each machine and reach it through
an ssh tunnel: the protocol has no authentication.

    python examples/rpc.py [MODEL.gguf]          (default: the embedded Gemma-3-270M)
"""
import os
import socket
import subprocess
import sys
import time

from rotorquant import Llama
from rotorquant._native import BIN_DIR


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([os.path.join(BIN_DIR, "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the RPC server did not start")


def main(model: str) -> None:
    server, endpoint = start_server()
    try:
        with Llama(model, n_ctx=512, n_gpu_layers=99, rpc_servers=[endpoint],
                   cache_type_k="iso3", cache_type_v="iso3") as llm:
            text = llm.generate("The three primary colours are", max_tokens=16, temperature=0)
            for device, mem in llm.memory_bytes(by_device=True).items():
                print(f"{device}: weights {mem['model'] / 2**20:.1f} MiB, KV cache {mem['kv'] / 2**20:.1f} MiB")
            print(repr(text))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
