#!/usr/bin/env bash
# Builds contres with CUDA in a separate virtual environment and checks that every op with a CPU kernel
# also has a CUDA kernel; the build must include the fused cuDNN step graphs, which are then checked on the
# CPU (tests/test_cudnn_graphs.py: construction, validation, H200 heuristics and NVRTC builds through a stub
# CUDA driver), with the controls of the CUDA caches (tests/test_cuda_caches.py) and the extension's own
# libstdc++ code (tests/test_binary.py: none allowed). Needs nvcc (CUDA 13.0) and a C compiler but no GPU.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CONTRES_CUDA_VENV:-/tmp/contres-ci-cuda-venv}"
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
# Build from a copy, so the CPU build in the working tree is left alone.
(cd "$repo" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -xf - -C "$src"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.14.1" numpy ninja pybind11 "setuptools>=64" wheel tqdm pytest
# The cuDNN frontend is header-only: its Python dependencies are not needed for the build.
"$venv/bin/pip" install -q --no-deps "nvidia-cudnn-frontend==1.32.0"
t0=$(date +%s)
(cd "$src" && CONTRES_CUDA=1 CONTRES_CUDNN_FUSION=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
  "$venv/bin/pip" install -q --no-build-isolation --no-deps --force-reinstall .)
echo "CUDA build took $(( $(date +%s) - t0 )) s"
cd /tmp && "$venv/bin/python" - <<'PY'
import os

import torch
import contres

info = contres.build_info()
print("build_info:", info)
assert info["cuda_kernels"], f"CUDA kernels missing from the build: {info}"
assert info["cuda_version"] and info["cuda_archs"], info
assert info["cudnn_fusion"], f"the fused cuDNN graphs are missing from the build: {info}"
so = contres._ext._C.__file__
print(f"extension: {so} ({os.path.getsize(so) / 2**20:.1f} MiB)")
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("contres::"))
assert ops, "no contres ops registered"
for qualified in ops:
    has_cpu = torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU")
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA")
    print(f"{qualified}: CPU={has_cpu} CUDA={has_cuda}")
    assert not has_cpu or has_cuda, f"{qualified} has a CPU kernel but no CUDA kernel"
print("CUDA build OK: every op with a CPU kernel has a CUDA kernel")
PY
echo "== fused cuDNN graphs, the CUDA caches' controls, the extension's libstdc++ code: CPU-side checks"
cd /tmp && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$src/tests/test_cudnn_graphs.py" \
  "$src/tests/test_cuda_caches.py" "$src/tests/test_binary.py"
echo "== the CUDA wheel, installed into a fresh environment with torch 2.14.1 and no compiler"
EXPECT_CUDA=1 bash "$src/scripts/check_wheel.sh" "$venv/bin/python"
