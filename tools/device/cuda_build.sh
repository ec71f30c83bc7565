#!/usr/bin/env bash
# On a GPU machine without network: install the carried wheels, unpack the carried upstream
# tree (again whenever the tarball changed), build and install rotorquant with CUDA.
#   carry: .carry (upstream.tar.gz from `prepare.py --pack`), .whl (cffi, pycparser wheels
#          for the machine's Python; see tools/device/README.md)
#   usage: source tools/device/cuda_build.sh [CUDA_ARCH]   (exports PYTHONPATH; $OUT/build.log)
set -euo pipefail
arch=${1:-90}
out=${OUT:-/tmp/rq-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
tree=vendor/llama-cpp-turboquant/llama.cpp
sum=$(sha256sum .carry/upstream.tar.gz | cut -c1-16)
if [ "$(cat "$tree/.rq-carried" 2>/dev/null)" != "$sum" ]; then
    tar -xzf .carry/upstream.tar.gz -C vendor/llama-cpp-turboquant/
    echo "$sum" > "$tree/.rq-carried"
fi
start=$(date +%s)
if ! CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch" \
        python3 -m pip install --no-build-isolation --no-deps -q . > "$out/build.log" 2>&1; then
    grep -E "error|Error" "$out/build.log" | head -30
    tail -20 "$out/build.log"
    exit 1
fi
echo "build_seconds=$(( $(date +%s) - start ))"
(cd /tmp && python3 -c "import rotorquant; b = rotorquant.build_info(); print('backends', b['backends']); assert 'CUDA' in b['backends']")
