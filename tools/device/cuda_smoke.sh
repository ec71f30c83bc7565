#!/usr/bin/env bash
# On a GPU machine without network: build rotorquant with CUDA from a carried,
# already materialised upstream tree, check the build reports CUDA, run a smoke test.
#
#   carry: .carry (upstream.tar.gz from `prepare.py --pack`, gen_synth_gguf.py), .whl (cffi,
#          pycparser, gguf wheels for the machine's Python)
#   usage: bash tools/device/cuda_smoke.sh [CUDA_ARCH]   (results under $OUT)
set -euo pipefail
arch=${1:-90}
out=${OUT:-/tmp/rq-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
if [ ! -f vendor/llama-cpp-turboquant/llama.cpp/.rotorquant-stamp.json ]; then
    tar -xzf .carry/upstream.tar.gz -C vendor/llama-cpp-turboquant/
fi
start=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch" \
    python3 -m pip install --no-build-isolation --no-deps -q . 2>&1 | tee "$out/build.log" | tail -5
echo "build_seconds=$(( $(date +%s) - start ))" | tee -a "$out/build.log"
cd /tmp
python3 - <<'PY' | tee "$OUT/build_info.txt"
import json, rotorquant
info = rotorquant.build_info()
print(json.dumps({k: info[k] for k in ("upstream_commit", "patches", "backends", "backends_built", "devices")}, indent=1))
assert "CUDA" in info["backends"], "asked for CUDA, got none"
PY
python3 "$OLDPWD/.carry/gen_synth_gguf.py" llama-1b /tmp/l1b.gguf --gguf-py /tmp/site >/dev/null
bin=$(python3 -c "import rotorquant._native as n; print(n.BIN_DIR)")
for t in f16 q8_0; do
    "$bin/llama-bench" -m /tmp/l1b.gguf -ngl 99 -fa 1 -ctk $t -ctv $t -p 512 -n 64 -r 2 2>&1 | tee -a "$out/bench.txt" | tail -3
done
