#!/usr/bin/env bash
# GPU check: build the CUDA kernels, run the CUDA tests, run the CUDA benchmark. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # logs and results under $OUT when set, else benchmarks/results
#
# Written for the lent GPU machine (Python 3.12, torch 2.11+cu130, triton, nvcc 13.0, pybind11, scikit-build-core,
# no package registry reachable): everything installs offline, with no build isolation and no dependencies.
# Each step has its own timeout; the defaults add up to 9 minutes (override with the *_TIMEOUT variables).
# Environment: PYTHON (default python3, else python), OUT (output folder), CUDA_ARCHS (default 90),
#              BUILD_TIMEOUT, INFO_TIMEOUT, TEST_TIMEOUT, BENCH_TIMEOUT, BENCH_LINEAR_TIMEOUT (seconds).
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
OUT_DIR="${OUT:-benchmarks/results}"
CUDA_ARCHS="${CUDA_ARCHS:-90}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-210}"
INFO_TIMEOUT="${INFO_TIMEOUT:-30}"
TEST_TIMEOUT="${TEST_TIMEOUT:-90}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-120}"
BENCH_LINEAR_TIMEOUT="${BENCH_LINEAR_TIMEOUT:-90}"

if [[ ! -f pyproject.toml || ! -d rlaifv_fast ]]; then
    echo "gpu_check.sh: run me from the repository root" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
LOG_DIR="$OUT_DIR"
SUMMARY="$LOG_DIR/gpu_check_summary.txt"
: >"$SUMMARY"
T_ALL=$(date +%s)

# run_step NAME TIMEOUT_S CMD...: runs CMD under `timeout`, tees its output into $LOG_DIR/NAME.log, records the
# time and exit status in the summary, and stops the script on failure (124 = timed out).
run_step() {
    local name="$1" limit="$2"
    shift 2
    local t0 rc
    t0=$(date +%s)
    echo "=== [$name] (timeout ${limit}s): $*"
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    local dt=$(( $(date +%s) - t0 ))
    printf '%-10s rc=%-3s %4ss\n' "$name" "$rc" "$dt" | tee -a "$SUMMARY"
    if [[ "$name" == "test" && "$rc" == 5 ]]; then
        echo "WARNING: no CUDA tests were collected" | tee -a "$SUMMARY"
        return 0
    fi
    if [[ "$rc" != 0 ]]; then
        [[ "$rc" == 124 || "$rc" == 137 ]] && echo "[$name] timed out after ${limit}s" | tee -a "$SUMMARY"
        echo "FAILED at step $name (total $(( $(date +%s) - T_ALL ))s)" | tee -a "$SUMMARY"
        exit "$rc"
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG_DIR/gpu.txt" || true

# 1. build and install with the CUDA kernels for sm_90 (offline: no isolation, no deps, no index).
export RLAIFV_CUDA=ON
export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DRLAIFV_CUDA_ARCHS=${CUDA_ARCHS}"
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
run_step build "$BUILD_TIMEOUT" "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v .

# 2. what was compiled in. -P keeps the source tree (cwd) off sys.path so the installed package is imported.
run_step info "$INFO_TIMEOUT" "$PYTHON" -P -c '
import json, torch, rlaifv_fast
info = rlaifv_fast.build_info()
print(json.dumps(info, indent=1))
print("torch", torch.__version__, "cuda", torch.version.cuda)
assert info["cuda"], "the build has no CUDA kernels"
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("device", torch.cuda.get_device_name())
'

# 3. the CUDA tests (pytest is configured with --import-mode=importlib; -P as above).
run_step test "$TEST_TIMEOUT" "$PYTHON" -P -m pytest -m cuda python_tests -x -q -p no:cacheprovider

# 4. the CUDA benchmark: table on stdout, ops_cuda.json and ops_cuda.png in $OUT_DIR.
run_step bench "$BENCH_TIMEOUT" "$PYTHON" benchmarks/bench_ops.py --device cuda --out-dir "$OUT_DIR"

# 5. the lm_head-fused log-probs ( Triton kernels) vs plain torch, and vs Liger-Kernel / cut-cross-entropy when
#    importable (carry their pure-Python wheels and `pip install --no-deps --no-index` them first):
#    linear_logps_cuda.json and linear_logps_cuda.png in $OUT_DIR.
run_step bench_linear "$BENCH_LINEAR_TIMEOUT" "$PYTHON" benchmarks/bench_linear_logps.py --device cuda \
    --out-dir "$OUT_DIR"

echo "OK: all steps passed in $(( $(date +%s) - T_ALL ))s" | tee -a "$SUMMARY"
