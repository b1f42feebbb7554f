#!/usr/bin/env bash
# The GPU acceptance run: one command for the day a GPU machine is lent.
#
#   benchmarks/gpu_acceptance.sh                 # on the GPU machine (no network needed)
#   benchmarks/gpu_acceptance.sh --dry-run       # anywhere: the same steps on the CPU, to check this script
#   benchmarks/gpu_acceptance.sh --report FILE   # where the report goes (default $OUT/ or runs/)
#
# Before: run `python benchmarks/prepare_gpu_data.py` where CIFAR-10 is, and carry
# gpu_data/ (37 MB) with the source tree; without it the training step uses random
# images and says so. The tests need pytest and hypothesis; if the GPU machine may
# lack them, carry their wheels too (about 3 MB), installed offline here:
#   pip download --dest gpu_wheels --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_17_x86_64 pytest hypothesis
#
# Steps, each under `timeout`, all inside one deadline (11.5 minutes by default,
# GPU_ACCEPTANCE_SECONDS to change it) so that the whole run fits a 12-minute slot:
#   1. install minires from this tree without dependencies (the machine has no network);
#   2. `python -m minires info`: versions, devices, and whether kernels compile;
#   3. the GPU tests with MINIRES_REQUIRE_GPU=1 (a skip is a failure), and the
#      no-GPU CUDA checks of tests/cuda_host; then every gpu-marked test elsewhere;
#   4. benchmarks/bench_gpu.py: layer timings and a training epoch against PyTorch;
#   5. benchmarks/gpu_train.py: ResNet-20 on the CIFAR-10 sample for about 4.5 minutes
#      (test accuracy, seconds per epoch);
#   6. one data-parallel step on two GPUs, only when there are two and
#      minires.distributed and mpiexec are there.
# Everything printed goes to ONE report file, with a summary at its end. A step that
# fails does not stop the others; the exit status is 1 when any step failed.

set -uo pipefail  # not -e: every step runs and is reported, failed or not

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

DRY_RUN=0
REPORT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --report) REPORT="${2:?--report needs a file}"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_acceptance.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$REPORT" ]; then
  REPORT="${OUT:-$ROOT/runs}/gpu_acceptance_report.txt"
fi
mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"

PYTHON="${PYTHON:-python}"
TOTAL_SECONDS="${GPU_ACCEPTANCE_SECONDS:-690}"
START=$SECONDS
SUMMARY=()
FAILED=0

# The source tree's minires comes first on the path whatever the install step manages:
# the benchmark scripts run from benchmarks/, where `import minires` would not find it.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
if [ "$DRY_RUN" = 1 ]; then
  export MINIRES_DEVICE=cpu
fi

say() { echo "$*" | tee -a "$REPORT"; }

seconds_left() { echo $((TOTAL_SECONDS - (SECONDS - START))); }

# step NAME LIMIT COMMAND...: run COMMAND under `timeout`, at most LIMIT seconds and never
# past the deadline; its output goes to the terminal and the report; the outcome to SUMMARY.
step() {
  local name="$1" limit="$2"
  shift 2
  local left
  left=$(($(seconds_left) - 5))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 10 ]; then
    say "=== $name: not run, the ${TOTAL_SECONDS} s deadline is reached"
    SUMMARY+=("$name: NOT RUN (deadline)")
    FAILED=1
    return
  fi
  say ""
  say "=== $name (at most ${limit} s) ==="
  say "\$ $*"
  local began=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT"
  rc=${PIPESTATUS[0]}
  record "$name" "$rc" $((SECONDS - began))
}

# record NAME RC SECONDS [EXPECTED_RC]: PASS, TIMEOUT or FAIL, into the summary.
record() {
  local name="$1" rc="$2" took="$3" expected="${4:-0}" outcome
  if [ "$rc" = "$expected" ]; then
    outcome="PASS"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    outcome="TIMEOUT"
  else
    outcome="FAIL (exit $rc)"
  fi
  if [ "$outcome" != "PASS" ]; then FAILED=1; fi
  say "--- $name: $outcome in ${took} s"
  SUMMARY+=("$name: $outcome (${took} s)")
}

skip() {
  say ""
  say "=== $1: skipped: $2"
  SUMMARY+=("$1: SKIPPED ($2)")
}

# -- header ------------------------------------------------------------------------
say "minires GPU acceptance run$([ "$DRY_RUN" = 1 ] && echo ' (DRY RUN on the CPU)')"
say "date:   $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "host:   $(hostname)"
say "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'unknown (no git here)')"
say "report: $REPORT"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 20 nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>&1 | tee -a "$REPORT"
else
  say "nvidia-smi: not found"
fi

# -- 1. install ----------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  skip "install" "dry run: this environment is not changed (would run: $PYTHON -m pip install --no-deps --no-build-isolation -e .)"
else
  # --no-build-isolation: no network for a fresh setuptools; falls back to a plain install.
  step "install" 90 bash -c "$PYTHON -m pip install --no-deps --no-build-isolation -e . \
    || $PYTHON -m pip install --no-deps --no-build-isolation ."
fi

# The test tools, from carried wheels when the machine lacks them (it has no network).
if ! "$PYTHON" -c "import pytest, hypothesis" >/dev/null 2>&1; then
  if [ -d gpu_wheels ] && [ "$DRY_RUN" = 0 ]; then
    step "test tools from gpu_wheels/" 60 "$PYTHON" -m pip install --no-index --find-links gpu_wheels pytest hypothesis
  else
    say "pytest or hypothesis is missing and there is no gpu_wheels/ to install them from: the test steps will fail"
  fi
fi

# -- 2. info -------------------------------------------------------------------------
step "minires info" 60 "$PYTHON" -m minires info

# -- 3. tests --------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  step "GPU tests (dry run: they skip)" 240 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/gpu tests/cuda_host
else
  step "GPU tests (MINIRES_REQUIRE_GPU=1)" 240 \
    env MINIRES_REQUIRE_GPU=1 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/gpu tests/cuda_host
fi

# gpu-marked tests outside tests/gpu skip by themselves without a GPU; on the GPU a skip is a failure.
# Only the files that have such tests are collected: importing every test module would need
# every test dependency (nbformat, torch, ...), which the GPU machine may not have.
say ""
say "=== gpu-marked tests elsewhere ==="
began=$SECONDS
mapfile -t marked < <(grep -rl --include='test_*.py' "mark.gpu" tests | grep -v -e '^tests/gpu/' -e '^tests/cuda_host/')
if [ "${#marked[@]}" = 0 ]; then
  outside="no gpu-marked tests outside tests/gpu"
  rc=0
else
  say "\$ $PYTHON -m pytest -m gpu ${marked[*]}"
  outside=$(timeout --kill-after=10 90 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m gpu "${marked[@]}" 2>&1)
  rc=$?
fi
echo "$outside" | tee -a "$REPORT"
if [ "$DRY_RUN" = 0 ] && [ "$rc" = 0 ] && echo "$outside" | tail -n 1 | grep -q "skipped"; then
  say "a GPU test was skipped on the GPU machine"
  rc=1
fi
record "gpu-marked tests elsewhere" "$rc" $((SECONDS - began))

# -- 4. benchmark ------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  # Without a GPU the benchmark exits 2 and says why: that is the expected answer here.
  say ""
  say "=== bench_gpu.py (dry run: expects exit 2, no GPU) ==="
  began=$SECONDS
  timeout 60 "$PYTHON" benchmarks/bench_gpu.py --repeats 3 2>&1 | tee -a "$REPORT"
  record "bench_gpu.py (no GPU: exit 2 expected)" "${PIPESTATUS[0]}" $((SECONDS - began)) 2
else
  step "bench_gpu.py" 150 "$PYTHON" benchmarks/bench_gpu.py --repeats 7 --epoch-images 10000
fi

# -- 5. training -----------------------------------------------------------------------------
# What is left minus room for the last step; the driver fits its epochs into the budget.
budget=$(($(seconds_left) - 90))
if [ "$budget" -gt 270 ]; then budget=270; fi
if [ "$DRY_RUN" = 1 ]; then
  step "ResNet-20 training (dry run, CPU, tiny)" 90 "$PYTHON" benchmarks/gpu_train.py --device cpu --budget 20 \
    --limit-train 256 --limit-test 128 --max-epochs 2
elif [ "$budget" -lt 30 ]; then
  skip "ResNet-20 training" "only ${budget} s left before the deadline"
  FAILED=1  # the run's main result is missing
else
  step "ResNet-20 training (${budget} s budget)" $((budget + 60)) "$PYTHON" benchmarks/gpu_train.py --budget "$budget"
fi

result=$(grep '^RESULT ' "$REPORT" | tail -n 1)
if [ -n "$result" ]; then SUMMARY+=("training result: ${result#RESULT }"); fi

# -- 6. two GPUs ----------------------------------------------------------------------------
gpus=$("$PYTHON" -c "from minires import backend
print(backend.device('cuda').xp.cuda.runtime.getDeviceCount() if backend.cupy_available() else 0)" 2>/dev/null \
  || echo 0)
if [ "$gpus" -lt 2 ]; then
  skip "2-GPU data-parallel step" "$gpus GPU(s) here"
elif ! "$PYTHON" -c "import minires.distributed, mpi4py" >/dev/null 2>&1; then
  skip "2-GPU data-parallel step" "minires.distributed or mpi4py does not import"
elif ! command -v mpiexec >/dev/null 2>&1; then
  skip "2-GPU data-parallel step" "no mpiexec on PATH"
else
  step "2-GPU data-parallel step" 120 mpiexec -n 2 "$PYTHON" benchmarks/gpu_train.py --data-parallel-step
fi

# -- summary ----------------------------------------------------------------------------------
say ""
say "=== summary ($((SECONDS - START)) s in all) ==="
for line in "${SUMMARY[@]}"; do say "$line"; done
say "report written to $REPORT"
exit "$FAILED"
