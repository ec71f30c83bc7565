#!/usr/bin/env bash
# On a GPU machine: the benchmark models of issue 5, written in the background (setsid, so
# they survive the call that starts them) into /root/models.  Start it before (or while)
# cuda_build.sh runs: it waits for the upstream tree (gguf-py) to be unpacked, writes the
# F16 files of the first PRE shapes at once, and quantizes once the build is installed
# (PYTHONPATH=/tmp/site, as cuda_build.sh sets it), one F16 file at a time after that so
# the disk (64 GB) holds at most PRE of them.
#   l8b-q4km.gguf   random weights, Llama-3.1-8B's shape, Q4_K_M (as ../shared/docs/h200-baseline.md)
#   q35h-q4km.gguf  dense Qwen3.5 (arch qwen35): 3 linear-attention layers per full-attention
#                   layer, Qwen3.5-397B's attention (head_dim 256, 32/2 heads)
#   SHAPES="llama31-8b:l8b qwen35-attn:q35a ..." overrides the list (shape names: gen_synth_gguf.py).
# Progress in /root/models/log; each file appears under its final name only when complete.
set -euo pipefail
mkdir -p /root/models
gg=$PWD/vendor/llama-cpp-turboquant/llama.cpp/gguf-py
gen=$PWD/tools/device/gen_synth_gguf.py
shapes=${SHAPES:-llama31-8b:l8b qwen35-hybrid:q35h}
pre=${PRE:-2}
setsid bash -c "
  export PYTHONPATH=/tmp/site
  f16() {  # shape name -> /root/models/name-f16.gguf, unless it or the quantized file exists
    [ -f /root/models/\$2-f16.gguf ] || [ -f /root/models/\$2-q4km.gguf ] ||
      { python3 $gen \$1 /root/models/\$2.f16.tmp --gguf-py $gg &&
        mv /root/models/\$2.f16.tmp /root/models/\$2-f16.gguf && echo \"\$2 f16 \$(date +%T)\"; }
  }
  until [ -d $gg/gguf ]; do sleep 2; done
  i=0
  for s in $shapes; do
    i=\$((i + 1)); [ \$i -le $pre ] && f16 \${s%%:*} \${s##*:}
  done
  until bin=\$(cd /tmp && python3 -c 'import rotorquant._native as n; print(n.BIN_DIR)' 2>/dev/null) &&
        [ -x \$bin/llama-quantize ]; do sleep 5; done
  for s in $shapes; do
    name=\${s##*:}
    [ -f /root/models/\$name-q4km.gguf ] && continue
    f16 \${s%%:*} \$name &&
    \$bin/llama-quantize /root/models/\$name-f16.gguf /root/models/\$name.tmp Q4_K_M \$(nproc) > /dev/null 2>&1 &&
    mv /root/models/\$name.tmp /root/models/\$name-q4km.gguf && rm -f /root/models/\$name-f16.gguf
    echo \"\$name q4km \$(date +%T)\"
  done" >> /root/models/log 2>&1 < /dev/null &
echo "synthetic models: writing in the background (/root/models/log)"
