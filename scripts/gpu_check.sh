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

if [[ ",$SKIP," != *",tests,"* ]]; then
  stamp "CUDA tests (every device-parametrised test on cuda, the CUDA-only files)"
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider -n 6 -rf tests/test_cuda.py tests/test_cuda_graphs.py \
    tests/test_cudnn_fusion_gpu.py tests/test_op_validation.py tests -k "cuda or Cuda or cudnn" > "$OUT/tests.log" 2>&1
  rc=$?
  grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
  grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -40
  [ $rc -eq 0 ] || status=1
fi

if [[ ",$SKIP," != *",table,"* ]] && [ "$(left)" -gt 200 ]; then
  stamp "fused cuDNN graphs: support and speed table"
  timeout 90 "$PY" scripts/cudnn_fusion_table.py "$OUT/table.json" --precisions tf32,bf16 > "$OUT/table.log" 2>&1
  tail -50 "$OUT/table.log" | cut -c1-170
fi

if [[ ",$SKIP," != *",bench,"* ]] && [ "$(left)" -gt 100 ]; then
  stamp "benchmark: contres' paths side by side"
  timeout $(( $(left) - 40 )) "$PY" -m contres.bench --device cuda --no-progress --json "$OUT/bench.json" \
    --methods fused,fused_cudagraph,fused_cudnn,fused_cudnn_cudagraph,fused_ckpt,eager,compiled,fused_graphed \
    2> "$OUT/bench.err" | tee "$OUT/bench.log"
  [ ${PIPESTATUS[0]} -eq 0 ] || { tail -20 "$OUT/bench.err"; status=1; }
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
