#!/usr/bin/env bash
# The one command for the GPU machine: about 8 minutes (GPU_CHECK_BUDGET, default 470 s), so that one rerun still
# fits in a 15-minute draw. In this order, each group in processes of its own, each printing its exit code and
# seconds (rc 124: a timeout; 139: SIGSEGV; 134: SIGABRT):
#   1. toolchain facts: compiler, the libstdc++ Python loads, torch, CUDA, cuDNN, the frontend, the tools;
#   2. the build, timed (CONTRES_CUDA=1, CONTRES_CUDNN_FUSION=1, sm_90), and _C.so checked for a libstdc++ of its own;
#   3. the code that never ran on a GPU, first: the foreign-tensor cases on CUDA; one call of each fused graph
#      kind, each in a fresh process with the cuDNN frontend's log on; the chains on CUDA (their run passes composed
#      of ATen ops, against the reference); tests/test_cuda_graphs.py -v; the fusion and
#      validation tests under pytest-xdist with worker restarts (a crash names its test and the rest go on); a
#      backtrace of the first crashing test id, alone (gdb where installed, else cuda-gdb while time allows);
#   4. the broad CUDA group;
#   5. a quick benchmark of every path (eager, compiled, fused = aten, fused_cudnn, fused_cudagraph,
#      fused_cudnn_cudagraph) at the CUDA cases: B128 C64 32x32 N8 float32 and under bf16 autocast, B32 C16 28x28,
#      single/relu and double_sym/tanh; torchdiffeq's ODE function at B128 C64 7x7 (eager, compiled, fused);
#   6. compute-sanitizer's memcheck, if time is left.
# Every Python process of the tests runs with scripts/segv_backtrace.c preloaded (the image has no gdb), so a crash
# prints its C/C++ frames into the log, and frames in _C.so are turned into lines (addr2line) in summary.txt.
#
#   usage (device tool): bash scripts/gpu_check.sh            with timeout_s 540 and carry [".whl"]
#   GPU_CHECK_SKIP=build,never_run,broad,bench,sanitizer      leave groups out on a rerun (build: reuse the last one)
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh             on any machine: print the plan and check that every
#                                                             command it would run exists and parses (the test suite
#                                                             does this: tests/test_gpu_check.py); builds nothing
# Carry (".whl/", git-ignored; the image lacks the first, the other two are fallbacks when it lacks them):
#   nvidia_cudnn_frontend-1.32.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl  (headers)
#   pytest_xdist-3.8.0-py3-none-any.whl, execnet-2.1.2-py3-none-any.whl
# fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl nvidia-cudnn-frontend==1.32.0 pytest-xdist==3.8.0 execnet==2.1.2
# What comes back (at most 8 files, under $OUT): summary.txt, build.log, never_run.log, frontend.log, broad.log,
# bench.log, bench.json, sanitizer.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/contres-gpu}"
mkdir -p "$OUT"
DRY="${GPU_CHECK_DRY_RUN:-0}"
if [ -z "${PYTHON:-}" ] && [ -x /opt/torch/.venv/bin/python3 ]; then PYTHON=/opt/torch/.venv/bin/python3; fi
PY="${PYTHON:-python3}"
SKIP=",${GPU_CHECK_SKIP:-},"
BUDGET="${GPU_CHECK_BUDGET:-470}"
SUMMARY="$OUT/summary.txt"
SITE=/tmp/contres-site
SEGV_LIB=/tmp/contres-segv/libsegv_backtrace.so
export PYTHONUNBUFFERED=1
: > "$SUMMARY"
t0=$(date +%s)
status=0

note() { echo "== [$(( $(date +%s) - t0 )) s] $*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
skipped() { [[ "$SKIP" == *",$1,"* ]]; }

# The dry run's check of one command: pytest collects its selection (which must not be empty), the benchmark
# parses its arguments, our scripts check theirs, Python files compile; GPU tools are only named.
dry_check() {
  local args=("$@") i py_file=""
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[i]}" = "-m" ] && [ "${args[i+1]:-}" = "pytest" ]; then
      # Collected in this process (-n 0) where pytest-xdist is installed, so its options are checked too; without
      # it they are left out (they would not parse).
      local sel=("${args[@]:i+2}") kept=() j xdist=0
      "$PY" -c "import xdist" 2>/dev/null && xdist=1
      for ((j = 0; j < ${#sel[@]}; j++)); do
        case "${sel[j]}" in
          -q|-qq|-v|-vv|-r*) ;;  # the listing below needs its own verbosity
          -n) j=$((j + 1)); [ $xdist = 1 ] && kept+=(-n 0);;
          --max-worker-restart) j=$((j + 1)); [ $xdist = 1 ] && kept+=(--max-worker-restart "${sel[j]}");;
          *) kept+=("${sel[j]}");;
        esac
      done
      local log n
      log=$("$PY" -m pytest --collect-only -q -p no:cacheprovider "${kept[@]}" 2>&1)
      n=$(echo "$log" | grep -cE "^tests/[^ ]+::")
      if [ "$n" -gt 0 ]; then echo "   check: pytest collects $n tests"; else
        echo "   DRY RUN ERROR: pytest collects nothing:"; echo "$log" | tail -5; status=1; fi
      return
    fi
    if [ "${args[i]}" = "-m" ] && [ "${args[i+1]:-}" = "contres.bench" ]; then
      if "$PY" -c "import sys; from contres.bench.cli import parse_args; parse_args(sys.argv[1:])" \
          "${args[@]:i+2}" > /dev/null; then echo "   check: benchmark arguments parse"; else
        echo "   DRY RUN ERROR: benchmark arguments"; status=1; fi
      return
    fi
    case "${args[i]}" in *.py) py_file="${args[i]}"; break;; esac
  done
  if [ -n "$py_file" ]; then
    if ! "$PY" -m py_compile "$py_file"; then echo "   DRY RUN ERROR: $py_file does not compile"; status=1; return; fi
    case "$py_file" in
      scripts/gpu_fused_kinds.py|scripts/gpu_check_tools.py)
        if GPU_CHECK_DRY_RUN=1 "$PY" "${args[@]:i}" > /dev/null; then echo "   check: $py_file accepts its arguments"
        else echo "   DRY RUN ERROR: $py_file ${args[*]:i+1}"; status=1; fi;;
      *) echo "   check: $py_file compiles";;
    esac
  else
    echo "   (a tool of the GPU machine: ${args[0]})"
  fi
}

# group NAME LIMIT LOG COMMAND...: runs COMMAND with its own time limit (cut to the budget left), appends its
# output to LOG, and notes its exit code and seconds. Returns COMMAND's exit code.
group() {
  local name=$1 limit=$2 log=$3; shift 3
  if [ "$DRY" = 1 ]; then
    echo "plan: $name (at most ${limit} s) -> $(basename "$log"): $*"
    dry_check "$@"
    return 0
  fi
  local l; l=$(left)
  (( limit > l - 5 )) && limit=$(( l - 5 ))
  if (( limit < 10 )); then note "$name: not run (no time left)"; return 0; fi
  echo "######## $name: $*" >> "$log"
  local s rc what
  s=$(date +%s)
  timeout -k 5 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  case $rc in
    0) what="ok";; 124|137) what="TIMEOUT at ${limit} s";; 139) what="CRASH: SIGSEGV";; 134) what="CRASH: SIGABRT";;
    135) what="CRASH: SIGBUS";; 5) what="no tests selected";; *) what="failed";;
  esac
  note "$name: rc=$rc ($what) in $(( $(date +%s) - s )) s"
  [ $rc -eq 0 ] || status=1
  return $rc
}

# ---- 1. toolchain facts and carried packages ------------------------------------------------------------------
[ "$DRY" = 1 ] && echo "GPU_CHECK_DRY_RUN: the plan, with each command checked here ($(uname -n)); nothing built or run"
if [ -d .whl ] && [ "$DRY" != 1 ]; then
  mkdir -p "$SITE"
  for whl in .whl/nvidia_cudnn_frontend-*.whl; do
    [ -f "$whl" ] && "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$whl" >> "$SUMMARY" 2>&1
  done
  [ -d "$SITE/include" ] && export CUDNN_FRONTEND_INCLUDE="$SITE/include"
  if ! "$PY" -c "import xdist" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/execnet-*.whl \
      .whl/pytest_xdist-*.whl >> "$SUMMARY" 2>&1 && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if [ "$DRY" = 1 ]; then
  echo "plan: facts -> summary.txt: nvidia-smi; $PY scripts/gpu_check_tools.py facts"
  dry_check "$PY" scripts/gpu_check_tools.py facts
  mkdir -p "$(dirname "$SEGV_LIB")"
  if cc -shared -fPIC -O1 -o "$SEGV_LIB" scripts/segv_backtrace.c; then echo "   check: segv_backtrace.c builds"
  else echo "   DRY RUN ERROR: segv_backtrace.c"; status=1; fi
else
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    git log -1 --format='commit %h %s' 2>/dev/null
    "$PY" scripts/gpu_check_tools.py facts; } >> "$SUMMARY" 2>&1
  mkdir -p "$(dirname "$SEGV_LIB")"
  cc -shared -fPIC -O1 -o "$SEGV_LIB" scripts/segv_backtrace.c >> "$SUMMARY" 2>&1 || SEGV_LIB=""
  note "facts (summary.txt)"
fi

# ---- 2. the build ---------------------------------------------------------------------------------------------
export CONTRES_CUDA=1 CONTRES_CUDNN_FUSION=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, for scripts and child processes
if skipped build && [ "$DRY" != 1 ]; then
  note "build: skipped (GPU_CHECK_SKIP), using the last one"
elif ! group build 240 "$OUT/build.log" "$PY" setup.py build_ext --inplace; then
  grep -E "error|Error" "$OUT/build.log" | head -30 | tee -a "$SUMMARY"
  note "BUILD FAILED: stopping (build.log)"
  exit 1
fi
if [ "$DRY" != 1 ]; then
  "$PY" -c "import contres; print('build_info', contres.build_info())" 2>&1 | tee -a "$SUMMARY"
  SO=$("$PY" -c "import contres; print(contres._ext._C.__file__)" 2>/dev/null)
fi
group "libstdc++ of its own in _C.so" 30 "$SUMMARY" "$PY" scripts/check_so_symbols.py "${SO:-contres/_C.so}"

# Python processes of the tests: C/C++ frames on a crash, Python's too.
export PYTHONFAULTHANDLER=1
TEST_ENV=(env)
[ -n "$SEGV_LIB" ] && TEST_ENV=(env "LD_PRELOAD=$SEGV_LIB")
PYTEST=("${TEST_ENV[@]}" "$PY" -m pytest -p no:cacheprovider -rfE)
N_WORKERS=8

# ---- 3. the code that never ran on a GPU ----------------------------------------------------------------------
NEVER="$OUT/never_run.log"
if ! skipped never_run; then
  group "foreign tensors on CUDA (one process, case by case)" 60 "$NEVER" "${TEST_ENV[@]}" "$PY" tests/foreign_cases.py cuda
  for kind in fwd_single conv_bias_act conv_axpy dgrad_gate dgrad_add conv_gate wgrad; do
    group "fused graph $kind (fresh process, frontend log)" 40 "$NEVER" \
      "${TEST_ENV[@]}" CUDNN_FRONTEND_LOG_INFO=1 "CUDNN_FRONTEND_LOG_FILE=$OUT/frontend_$kind.txt" \
      "$PY" scripts/gpu_fused_kinds.py "$kind"
  done
  if [ "$DRY" != 1 ]; then  # one file back: each kind's log, its first and last lines
    for f in "$OUT"/frontend_*.txt; do
      [ -f "$f" ] || continue
      { echo "######## $(basename "$f") ($(wc -l < "$f") lines)"; head -150 "$f"; echo "..."; tail -150 "$f"; } \
        >> "$OUT/frontend.log"
      rm -f "$f"
    done
  fi
  group "chains on CUDA: ATen run passes (tests/test_chains.py -k cuda)" 60 "$NEVER" "${PYTEST[@]}" -q \
    tests/test_chains.py -k cuda
  group "CUDA graphs (tests/test_cuda_graphs.py -v)" 90 "$NEVER" "${PYTEST[@]}" -v tests/test_cuda_graphs.py
  group "fusion and validation, xdist with worker restarts" 150 "$NEVER" "${PYTEST[@]}" -q \
    -n "$N_WORKERS" --max-worker-restart 50 tests/test_cudnn_fusion_gpu.py tests/test_op_validation.py \
    tests/test_cuda.py -k "cudnn or op_validation"
  if [ "$DRY" = 1 ]; then
    echo "plan: backtrace of the first crashing test id, alone: gdb -batch -ex run -ex bt (cuda-gdb without gdb)"
    dry_check "$PY" scripts/gpu_check_tools.py crashed "$NEVER"
  else
    FIRST=$("$PY" scripts/gpu_check_tools.py crashed "$NEVER")
    if [ -n "$FIRST" ]; then
      note "first crash: $FIRST"
      if [[ "$FIRST" == tests/* ]]; then
        DEBUGGER=$(command -v gdb || command -v cuda-gdb || true)
        if [ -n "$DEBUGGER" ]; then
          group "backtrace of $FIRST ($(basename "$DEBUGGER"))" 100 "$NEVER" "$DEBUGGER" -q -batch \
            -ex "set pagination off" -ex "set print thread-events off" -ex run -ex "thread apply all bt 30" \
            --args "$PY" -m pytest -p no:cacheprovider -x -q "$FIRST"
        fi
      fi
    fi
  fi
fi

# ---- 4. the broad CUDA group ----------------------------------------------------------------------------------
if ! skipped broad; then
  group "broad CUDA group, xdist" 150 "$OUT/broad.log" "${PYTEST[@]}" -q -n "$N_WORKERS" --max-worker-restart 20 \
    tests -k "(cuda or Cuda) and not cudnn" --ignore=tests/test_cuda_graphs.py --ignore=tests/test_cudnn_fusion_gpu.py \
    --ignore=tests/test_op_validation.py --ignore=tests/test_cudnn_graphs.py
fi

# ---- 5. a quick benchmark of every path -----------------------------------------------------------------------
if ! skipped bench; then
  BENCH=("${TEST_ENV[@]}" "$PY" -m contres.bench --device cuda --no-progress --repeats 5 --max-time 0.3)
  group "benchmark: every contres path and eager, the CUDA cases" 110 "$OUT/bench.log" "${BENCH[@]}" \
    --methods eager,fused,fused_cudnn,fused_cudagraph,fused_cudnn_cudagraph --json /tmp/contres-bench-paths.json
  group "benchmark: compiled, B128 C64 single/relu" 80 "$OUT/bench.log" "${BENCH[@]}" --batch 128 --channels 64 \
    --size 32 --layer single --methods eager,compiled,fused --json /tmp/contres-bench-compiled.json
  group "benchmark: torchdiffeq's ODE function, B128 C64 7x7" 60 "$OUT/bench.log" "${BENCH[@]}" --batch 128 \
    --channels 64 --size 7 --layer torchdiffeq --controls 1 --methods eager,compiled,fused \
    --json /tmp/contres-bench-torchdiffeq.json
  [ "$DRY" = 1 ] || "$PY" scripts/gpu_check_tools.py merge-json "$OUT/bench.json" /tmp/contres-bench-paths.json \
    /tmp/contres-bench-compiled.json /tmp/contres-bench-torchdiffeq.json
fi

# ---- 6. the sanitizer, if time is left ------------------------------------------------------------------------
if ! skipped sanitizer; then
  if [ "$DRY" = 1 ] || [ "$(left)" -gt 40 ]; then
    group "compute-sanitizer memcheck" 300 "$OUT/sanitizer.log" compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$PY" scripts/sanitize_case.py
  else
    note "compute-sanitizer: not run (no time left)"
  fi
fi

# ---- crashes: their frames in _C.so as functions and lines ---------------------------------------------------
if [ "$DRY" != 1 ] && [ -n "${SO:-}" ]; then
  "$PY" scripts/gpu_check_tools.py symbolize "$SO" "$NEVER" "$OUT/broad.log" "$OUT/bench.log" >> "$SUMMARY" 2>&1
fi
[ "$DRY" = 1 ] && { echo "dry run: status $status"; exit $status; }
note "done, status $status (budget ${BUDGET} s)"
exit $status
