#!/usr/bin/env bash
# Builds a wheel with the given Python's torch and meets it as a user does: a fresh virtual environment with that
# torch (as the wheel's metadata pins it) but no compiler on PATH and no source tree; it installs the wheel,
# imports contres, checks build_info() and runs a fused forward + backward against the reference.
#   usage: scripts/check_wheel.sh [PYTHON]      (default: python)   EXPECT_CUDA=1: the wheel must hold CUDA kernels
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build_py="${1:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

t0=$(date +%s)
"$build_py" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/contres-*.whl)
torch_req=$(unzip -p "$wheel" '*/METADATA' | sed -n 's/^Requires-Dist: \(torch==[^ ;]*\).*/\1/p')
echo "wheel: $(basename "$wheel") ($(( $(stat -c %s "$wheel") / 1048576 )) MiB, built in $(( $(date +%s) - t0 )) s); requires $torch_req"
[ -n "$torch_req" ] || { echo "the wheel does not pin torch"; exit 1; }

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$torch_req" numpy tqdm
# From here on PATH holds the environment alone: no compiler, and the working directory is outside the tree.
cd "$work"
env -i HOME="$HOME" PATH="$work/venv/bin" pip install -q --no-index --no-deps "$wheel"
env -i HOME="$HOME" PATH="$work/venv/bin" EXPECT_CUDA="${EXPECT_CUDA:-0}" WHEEL_VENV="$work/venv" python - <<'PY'
import os
import shutil

import torch

import contres
from contres import functional as F

assert not any(shutil.which(cc) for cc in ("cc", "gcc", "g++", "c++", "clang", "nvcc")), "a compiler is on PATH"
installed = os.path.realpath(os.environ["WHEEL_VENV"]) + os.sep
assert os.path.realpath(contres.__file__).startswith(installed), f"imported {contres.__file__}, not {installed}'s"
info = contres.build_info()
print("build_info:", info)
assert info["cpu_kernels"] and not info.get("load_error"), info
if os.environ["EXPECT_CUDA"] == "1":
    assert info["cuda_kernels"] and info["cudnn_fusion"], info
torch.manual_seed(0)
x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
w = (0.2 * torch.randn(3, 4, 4, 3, 3, dtype=torch.float64)).requires_grad_()
b = (0.2 * torch.randn(3, 4, dtype=torch.float64)).requires_grad_()
g = torch.randn(2, 4, 6, 5, dtype=torch.float64)
for method in ("euler", "rk4", "leapfrog"):
    kw = dict(T=1.0, n_steps=3, layer="double_sym", activation="tanh", interp="linear", method=method)
    results = []
    for backend in ("fused", "reference"):
        y = F.ode_block(x, w, b, backend=backend, **kw)
        results.append((y,) + torch.autograd.grad(y, (x, w, b), g))
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
print("the installed wheel runs the fused ops and matches the reference (euler, rk4, leapfrog)")
PY
# pip refuses the wheel beside another torch (where this machine's pip can see another release)
other=$("$work/venv/bin/pip" index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' |
        tr -d ' ' | grep -vx "${torch_req#torch==}" | head -1 || true)
if [ -n "$other" ]; then
  if "$work/venv/bin/pip" install -q --dry-run "$wheel" "torch==$other" > "$work/refuse.log" 2>&1; then
    echo "pip accepted the wheel beside torch $other"; exit 1
  fi
  echo "pip refuses the wheel beside torch $other: $(grep -m1 -o 'conflict[^.]*' "$work/refuse.log" || true)"
fi
echo "wheel check OK in $(( $(date +%s) - t0 )) s"
