#!/usr/bin/env bash
# The one command for the GPU machine: install the carried cuDNN frontend headers, build with the fused cuDNN
# graphs, run every CUDA test, the fused graphs' support table, the CUDA benchmark with each of contres' paths,
# and compute-sanitizer on a small case. Logs and JSON under $OUT. Each part has its own time limit, so the
# whole stays under 9 minutes on an H200.
#   usage: bash scripts/gpu_check.sh            (OUT defaults to /tmp/contres-gpu)
#   GPU_CHECK_SKIP=tests,table,bench,sanitizer  skip parts on a rerun
# The frontend travels as a wheel in .whl/ (ignored by git; name it in the device tool's carry), fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl nvidia-cudnn-frontend==1.32.0
# At most 8 files come back from $OUT: build, tests, table (log + json), bench (log + json + err), sanitizer.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/contres-gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SKIP="${GPU_CHECK_SKIP:-}"
export PYTHONUNBUFFERED=1
status=0
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }
left() { echo $(( ${GPU_CHECK_BUDGET:-530} - ($(date +%s) - t0) )); }

stamp "environment and build (CONTRES_CUDA=1, CONTRES_CUDNN_FUSION=1, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16)"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
            torch.backends.cudnn.version(), torch.cuda.get_device_name())"
  nvcc --version | tail -2; git log -1 --format='commit %h %s' 2>/dev/null; } > "$OUT/build.log" 2>&1
if ls .whl/nvidia_cudnn_frontend-*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/contres-site .whl/nvidia_cudnn_frontend-*.whl \
    >> "$OUT/build.log" 2>&1
  export CUDNN_FRONTEND_INCLUDE=/tmp/contres-site/include
fi
export CONTRES_CUDA=1 CONTRES_CUDNN_FUSION=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
if ! timeout 240 "$PY" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1; then
  grep -E "error|Error" "$OUT/build.log" | head -40
  stamp "BUILD FAILED (see build.log)"
  exit 1
fi
"$PY" -c "import contres; print(contres.build_info())" 2>&1 | tee -a "$OUT/build.log"
stamp "built"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, for scripts and child processes

# Test groups in separate processes, so that a crash in one does not take the others down.
run_tests() {  # name, time limit, pytest arguments...
  local name=$1 limit=$2; shift 2
  [ "$(left)" -gt 30 ] || { echo "skipped tests: $name (no time left)"; return; }
  (( limit > $(left) - 20 )) && limit=$(( $(left) - 20 ))
  stamp "CUDA tests: $name"
  echo "######## $name" >> "$OUT/tests.log"
  timeout "$limit" "$PY" -m pytest -q -p no:cacheprovider -rf "$@" >> "$OUT/tests.log" 2>&1
  local rc=$?
  tail -300 "$OUT/tests.log" | grep -E "passed|failed|error" | tail -1
  [ $rc -eq 0 ] || status=1
  if [ $rc -eq 139 ] && [ "$(left)" -gt 60 ]; then  # a segfault: the C++ frames of the first one, from cuda-gdb
    stamp "segfault in $name: backtrace"
    timeout 50 cuda-gdb -q -batch -ex run -ex "bt 12" --args "$PY" -m pytest -q -x -p no:cacheprovider "$@" 2>&1 |
      grep -E "SIGSEGV|^#[0-9]+ " | cut -c1-300 | tee -a "$OUT/tests.log" | head -14
  fi
}
if [[ ",$SKIP," != *",tests,"* ]]; then
  run_tests kernels 150 tests -k "(cuda or Cuda) and not cudnn and not compile" \
    --ignore=tests/test_cuda_graphs.py --ignore=tests/test_cudnn_graphs.py --ignore=tests/test_cudnn_fusion_gpu.py
fi
if [[ ",$SKIP," != *",bench,"* ]] && [ "$(left)" -gt 100 ]; then
  stamp "benchmark: contres' paths side by side"
  timeout 110 "$PY" -m contres.bench --device cuda --no-progress --json "$OUT/bench.json" \
    --methods "${GPU_CHECK_BENCH_METHODS:-fused,fused_cudagraph,fused_cudnn,fused_cudnn_cudagraph,fused_ckpt,eager,compiled,fused_graphed}" \
    2> "$OUT/bench.err" | tee "$OUT/bench.log"
  [ ${PIPESTATUS[0]} -eq 0 ] || { tail -20 "$OUT/bench.err"; status=1; }
fi
if [[ ",$SKIP," != *",tests,"* ]]; then
  run_tests graphs 60 tests/test_cuda_graphs.py
  run_tests compile 60 tests -k "(cuda or Cuda) and compile"
  run_tests fusion 90 -x tests/test_cudnn_fusion_gpu.py tests/test_cuda.py -k "cudnn"
fi

if [[ ",$SKIP," != *",table,"* ]] && [ "$(left)" -gt 200 ]; then
  stamp "fused cuDNN graphs: support and speed table"
  timeout 90 "$PY" scripts/cudnn_fusion_table.py "$OUT/table.json" --precisions tf32,bf16 > "$OUT/table.log" 2>&1
  tail -50 "$OUT/table.log" | cut -c1-170
fi


if [[ ",$SKIP," != *",sanitizer,"* ]] && [ "$(left)" -gt 40 ]; then
  stamp "compute-sanitizer --tool memcheck"
  timeout $(( $(left) - 5 )) compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" scripts/sanitize_case.py \
    > "$OUT/sanitizer.log" 2>&1
  rc=$?
  tail -4 "$OUT/sanitizer.log"
  echo "memcheck exit code: $rc"
fi
stamp "done, status $status"
exit $status
