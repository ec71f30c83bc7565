"""Where a model goes: plan the memory first (llama.cpp's own dry run of the load), then
load with as many layers on the GPUs as their free memory holds, and see where things went.
On a machine without a GPU everything stays in RAM; for a big MoE, `n_cpu_moe=N` keeps the
experts of the first N layers in RAM and `override_tensor={"exps": "CPU"}` all of them.

    python examples/placement.py [MODEL.gguf]          (default: the embedded Gemma-3-270M)
"""
import sys

from rotorquant import Llama
from rotorquant.plan import plan


def main(model: str) -> None:
    for k in ("f16", "iso3"):
        print(plan(model, n_ctx=8192, cache_type_k=k, cache_type_v=k).table(), end="\n\n")
    with Llama(model, n_ctx=8192, cache_type_k="iso3", cache_type_v="iso3", n_gpu_layers="auto") as llm:
        print(f"layers on GPUs: {llm.n_gpu_layers} (fitting: {llm.fit_status})")
        for device, mem in llm.memory_bytes(by_device=True).items():
            print(f"{device}: " + ", ".join(f"{part} {n / 2**20:.1f} MiB" for part, n in mem.items()))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
