#!/usr/bin/env bash
# On a GPU machine, after cuda_build.sh: the benchmark models of issue 5, written in the
# background (setsid, so they survive the call that starts them) into /root/models:
#   l8b-q4km.gguf   random weights, Llama-3.1-8B's shape, Q4_K_M (as ../shared/docs/h200-baseline.md)
#   q35a-q4km.gguf  the same dense layers with Qwen3.5-397B's attention (head_dim 256, 32/2 heads)
# Progress in /root/models/log; each file appears under its final name only when complete.
set -euo pipefail
mkdir -p /root/models
bin=$(cd /tmp && python3 -c "import rotorquant._native as n; print(n.BIN_DIR)")
gg=$PWD/vendor/llama-cpp-turboquant/llama.cpp/gguf-py
gen=$PWD/tools/device/gen_synth_gguf.py
setsid bash -c "
  for s in llama31-8b:l8b qwen35-attn:q35a; do
    shape=\${s%%:*}; name=\${s##*:}
    [ -f /root/models/\$name-q4km.gguf ] && continue
    python3 $gen \$shape /root/models/\$name-f16.gguf --gguf-py $gg &&
    $bin/llama-quantize /root/models/\$name-f16.gguf /root/models/\$name.tmp Q4_K_M \$(nproc) > /dev/null 2>&1 &&
    mv /root/models/\$name.tmp /root/models/\$name-q4km.gguf && rm -f /root/models/\$name-f16.gguf
    echo \"\$name done \$(date +%T)\"
  done" >> /root/models/log 2>&1 < /dev/null &
echo "synthetic models: writing in the background (/root/models/log)"
