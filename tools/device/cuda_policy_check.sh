#!/usr/bin/env bash
# On a GPU machine without network: build with CUDA (cuda_build.sh), then check that a
# KV policy gives the same logits on CPU and CUDA and survives a K-shift on the GPU.
#   carry: .carry, .whl (as cuda_build.sh);  usage: bash tools/device/cuda_policy_check.sh
set -euo pipefail
source tools/device/cuda_build.sh 90
repo=$PWD
cd /tmp
python3 "$repo/tools/device/gen_synth_gguf.py" llama-1b /tmp/l1b.gguf --gguf-py "$repo/vendor/llama-cpp-turboquant/llama.cpp/gguf-py" >/dev/null
python3 -c "import numpy" 2>/dev/null || { echo "numpy missing"; exit 1; }
python3 "$repo/tools/device/policy_crosscheck.py" /tmp/l1b.gguf "$out" 2>&1 | grep -v "^load" | tail -12
bin=$(python3 -c "import rotorquant._native as n; print(n.BIN_DIR)")
timeout 300 "$bin/llama-completion" -m /tmp/l1b.gguf -ngl 99 -fa on -ctk q8_0 -ctv q8_0 --kv-policy "$out/q8_0.kvpolicy.gguf" \
    -p "hello" -n 200 -c 128 --context-shift -no-cnv --temp 0 > "$out/shift.txt" 2>&1; echo "context shift exit $?" | tee -a "$out/build.txt"
grep -E "KV policy|K centering|error" "$out/shift.txt" | head -5
