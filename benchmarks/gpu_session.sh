#!/usr/bin/env bash
# Everything issue 14 asks of a GPU, in one call to the lent GPU machine
# (under 10 minutes; a session has 15 device minutes in all, start-up included):
#
#   here:        bash ../shared/device/gpu_check.sh prepare
#   device run:  command "bash .gpu/gpu_check.sh run -- bash benchmarks/gpu_session.sh",
#                carry [".gpu"], timeout_s 600
#
# It runs from the source tree (PYTHONPATH, set by gpu_check.sh) on the first
# GPU clatrous finds, and writes under $OUT (./gpu-out elsewhere):
#   devices.txt        the OpenCL devices and the one chosen
#   pytest.txt         every kernel variant's tests on the GPU (the sweep, the
#                      properties, groups and borders, the notebook)
#   bench-defaults.md  bench.py with the default table, PyTorch on CUDA (cuDNN) as the peer
#   tune.txt           the tuner on W3-d6, W4, W6 and D1 (the cooperative
#                      variants are in its space), and cache/tuning.json it wrote
#   bench-tuned.md     bench.py on those rows again, using what the tuner stored:
#                      the "device arrays / PyTorch (CUDA)" column is the
#                      issue's "within 2x of cuDNN"
# Each step has its own time limit, so a slow one cannot starve the rest; the
# limits add up to 570 s, inside the device tool's 600 s per call.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export CLATROUS_CACHE_DIR="$out/cache"
python=${PYTHON:-python3}

step() {  # step SECONDS LOGFILE COMMAND...: run, keep the output, say how it ended
    local limit=$1 log=$2
    shift 2
    echo "== $* (limit ${limit}s)"
    timeout "$limit" "$@" >"$log" 2>&1
    echo "== exit $? after ${SECONDS}s in all; last lines of $log:"
    tail -n 25 "$log"
}

step 30 "$out/devices.txt" "$python" -m clatrous devices
step 140 "$out/pytest.txt" "$python" -m pytest -q -p no:cacheprovider \
    tests/test_sweep.py tests/test_conv_properties.py tests/test_groups_borders.py tests/test_notebook.py
step 110 "$out/bench-defaults.log" "$python" benchmarks/bench.py --only W3-d6,W3-d12,W3-d18,W4,W6,D1 \
    --rounds 6 --budget 6 --record "$out/bench-defaults.md" --label "GPU, defaults (no tuning)"
step 170 "$out/tune.txt" "$python" -m clatrous tune --budget 40 \
    conv2d:n=1,h=33,w=33,cin=2048,cout=256,k=3,d=6,padding=same \
    conv2d:n=8,h=64,w=64,cin=64,cout=64,k=3,d=2,padding=same \
    conv1d:n=4,w=16000,cin=64,cout=64,k=2,d=256,padding=causal \
    conv2d:n=8,h=128,w=128,cin=256,cout=256,k=3,d=2,g=256,padding=same
step 120 "$out/bench-tuned.log" "$python" benchmarks/bench.py --only W3-d6,W4,W6,D1 --rounds 6 --budget 6 \
    --record "$out/bench-tuned.md" --label "GPU, tuned"
