#!/usr/bin/env bash
# On a GPU machine: after tools/device/cuda_smoke.sh built rotorquant with CUDA, see what
# the rotor cache types do with every layer offloaded (they have no CUDA kernels yet).
set -uo pipefail
out=${OUT:-/tmp/rq-out}
bin=$(cd /tmp && python3 -c "import rotorquant._native as n; print(n.BIN_DIR)")
for t in q8_0 iso3 iso4; do
    echo "== $t/$t, -ngl 99"
    timeout 120 "$bin/llama-bench" -m /tmp/l1b.gguf -ngl 99 -fa 1 -ctk $t -ctv $t -p 64 -n 16 -r 1 > "$out/probe-$t.txt" 2>&1
    echo "exit $?"; grep -E "^\|.*(tg|pp)|error|GGML_ASSERT|abort|fallback|not supported" "$out/probe-$t.txt" | head -8
done
