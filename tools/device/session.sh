#!/usr/bin/env bash
# The GPU session of issue 5 in calls of at most 10 minutes each (the machine is released
# 30 s after a call; a fresh one needs the full build).  Carry: .carry .whl .m1 on the
# first call, .m2 on the second (SmolLM2 split in two: tools/device/README.md).
#   bash tools/device/session.sh build     # models in the background, build, store diagnostics
#   bash tools/device/session.sh test      # the CUDA suite, the real-model tests
#   bash tools/device/session.sh measure   # speed tables
#   bash tools/device/session.sh profile   # ncu: kernel times per decode token (f16 vs iso3),
#                                          # the decode kernel's counters at depth 65536
#   bash tools/device/session.sh profile64 # ncu at depth 65536: FA kernel times per token,
#                                          # the combine kernel's counters
# Everything it prints is also under $OUT.
set -uo pipefail
export PIP_NO_INDEX=1 RQ_CACHE_DIR=/root/rqcache
out=${OUT:-/tmp/rq-out}
mkdir -p "$out" /root/rqcache/assets
crash_report() {  # where `import numpy; import rotorquant` dies, if it does
    (cd /tmp && python3 -c "import numpy; import rotorquant._native" > /dev/null 2>&1); rc=$?
    echo "import numpy; import rotorquant._native: rc $rc"
    [ $rc -eq 0 ] && return
    (cd /tmp && LD_DEBUG=libs python3 -c "import numpy; import rotorquant._native" 2>&1 | grep -E "calling init|error" | tail -8)
    (cd /tmp && timeout 120 cuda-gdb -batch -ex run -ex "bt 25" \
        --args python3 -c "import numpy; import rotorquant._native" 2>&1 | grep -vE "^\[New Thread|^\[Thread" | tail -40)
}
installed() {  # a fresh machine (the build call's one was released) has nothing to run
    (cd /tmp && python3 -c "import rotorquant" 2>/dev/null) && return
    echo "rotorquant is not installed here: the machine was released; run 'build' again" >&2
    return 1
}
profiling_setup() {  # llama-bench of the install and the Llama-3.1-8B-shaped model
    export PYTHONPATH=/tmp/site
    installed || exit 3
    bench=$(cd /tmp && python3 -c "from rotorquant._native import BIN_DIR; print(BIN_DIR)")/llama-bench
    m=/root/models/l8b-q4km.gguf
}
case "${1:-}" in
build)
    cp .m1/* /root/rqcache/
    bash tools/device/synth_models.sh
    source tools/device/cuda_build.sh 90 > "$out/build.txt" 2>&1 || { tail -40 "$out/build.txt"; exit 1; }
    set +e  # cuda_build.sh turns errexit on
    cat "$out/build.txt"
    python3 tools/device/cuda_set_rows_diag.py 2>&1 | tee "$out/diag.txt" | grep -E "bytes equal|mean row"
    crash_report > "$out/crash.txt" 2>&1; tail -70 "$out/crash.txt"
    cat /root/models/log
    ;;
test)
    export PYTHONPATH=/tmp/site
    installed || exit 3
    timeout 330 python3 -m pytest -m cuda tests/test_cuda.py -q -k "not real_model" -p no:cacheprovider \
        > "$out/cuda_tests.txt" 2>&1
    tail -25 "$out/cuda_tests.txt"
    cat /root/rqcache/smol.00 .m2/smol.01 .m2/smol.02 > /root/rqcache/assets/SmolLM2-135M-Instruct.Q4_1.gguf
    timeout 200 python3 -m pytest -m cuda tests/test_cuda.py -q -k "real_model or auto_offload" -p no:cacheprovider \
        > "$out/real_model.txt" 2>&1
    tail -40 "$out/real_model.txt"
    ;;
measure)
    export PYTHONPATH=/tmp/site
    installed || exit 3
    for i in $(seq 60); do [ -f /root/models/l8b-q4km.gguf ] && break; sleep 3; done
    timeout 250 python3 tools/bench_cuda.py /root/models/l8b-q4km.gguf --types f16,iso3,planar3,iso3:no-out-fusion,iso3:combine-kernel \
        --reps 2 --label "Llama-3.1-8B shape, Q4_K_M" 2>&1 | tail -14
    for i in $(seq 60); do [ -f /root/models/q35h-q4km.gguf ] && break; sleep 3; done
    timeout 150 python3 tools/bench_cuda.py /root/models/q35h-q4km.gguf --types f16,iso3,iso3:no-out-fusion --reps 1 \
        --label "Qwen3.5 hybrid shape (head_dim 256, 2 KV heads), Q4_K_M" 2>&1 | tail -12
    cp docs/BENCHMARKS.md "$out/"
    ;;
profile)
    profiling_setup
    for t in f16 iso3; do
        timeout 150 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
            "$bench" -m $m -ngl 99 -fa 1 -ctk $t -ctv $t -p 0 -n 4 -r 1 > "$out/$t.csv" 2> "$out/ncu_$t.err"
    done
    python3 tools/device/ncu_kernel_times.py "$out/f16.csv" "$out/iso3.csv" --tokens 5 | tee "$out/kernel_times.md" | head -30
    timeout 250 ncu --clock-control none --kernel-name regex:rq_fattn_decode --launch-skip 40 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
        "$bench" -m $m -ngl 99 -fa 1 -ctk iso3 -ctv iso3 -p 0 -n 2 -d 65536 -r 1 > "$out/ncu_decode_64k.txt" 2>&1
    grep -vE "^==PROF==|^\s*$" "$out/ncu_decode_64k.txt" | tail -120
    # where a short-cache decode block spends its time (depth 0: a serial chain per block)
    timeout 120 ncu --clock-control none --kernel-name regex:rq_fattn_decode --launch-skip 40 --launch-count 1 \
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
        "$bench" -m $m -ngl 99 -fa 1 -ctk iso3 -ctv iso3 -p 0 -n 4 -r 1 > "$out/ncu_decode_d0.txt" 2>&1
    grep -vE "^==PROF==|^\s*$" "$out/ncu_decode_d0.txt" | tail -70
    ;;
profile64)
    profiling_setup
    # at depth 65536: decode and combine kernels per token (prefill runs upstream's kernels,
    # so the filter only sees decode steps), then one combine launch's counters
    for t in f16 iso3; do
        timeout 150 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
            --kernel-name regex:"rq_fattn|flash_attn_ext_vec|flash_attn_combine" \
            "$bench" -m $m -ngl 99 -fa 1 -ctk $t -ctv $t -p 0 -n 4 -d 65536 -r 1 > "$out/${t}_64k.csv" 2> "$out/ncu_${t}_64k.err"
    done
    python3 tools/device/ncu_kernel_times.py "$out/f16_64k.csv" "$out/iso3_64k.csv" --tokens 5 | tee "$out/kernel_times_64k.md"
    timeout 120 ncu --clock-control none --kernel-name regex:rq_fattn_combine --launch-skip 40 --launch-count 1 \
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
        "$bench" -m $m -ngl 99 -fa 1 -ctk iso3 -ctv iso3 -p 0 -n 2 -d 65536 -r 1 > "$out/ncu_combine_64k.txt" 2>&1
    grep -vE "^==PROF==|^\s*$" "$out/ncu_combine_64k.txt" | tail -50
    ;;
*)
    echo "usage: $0 build|test|measure|profile|profile64" >&2; exit 2 ;;
esac
