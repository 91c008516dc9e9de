"""Build of contres._C: the CPU kernels always, the CUDA kernels when asked for or when possible.

Environment:
  CONTRES_CUDA=0|1       0: never build CUDA; 1: build CUDA or fail; unset: build CUDA when torch is a CUDA
                         build and nvcc is found.
  TORCH_CUDA_ARCH_LIST   architectures to compile for (default: the visible GPUs, else "9.0").
  CUDA_HOME              toolkit root (default: /usr/local/cuda when it exists).
  MAX_JOBS               parallel compile jobs (default: from CPU count and free memory).
  CONTRES_NATIVE=0       do not add -mavx2 -mfma -mf16c on x86 hosts that have them.
"""
import os
import platform
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _default_cuda_home():
    if not os.environ.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
        # torch would guess /usr/local from `which nvcc` when nvcc is linked into /usr/local/bin.
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _default_max_jobs():
    if os.environ.get("MAX_JOBS"):
        return
    jobs = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        jobs = max(1, min(jobs, avail_kb // (3 * 1024 * 1024)))  # nvcc can take ~3 GB per job
    except (OSError, StopIteration, ValueError):
        pass
    os.environ["MAX_JOBS"] = str(jobs)


_default_cuda_home()
_default_max_jobs()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
    flag = os.environ.get("CONTRES_CUDA", "").strip()
    have_nvcc = cpp_extension.CUDA_HOME is not None and Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists()
    possible = torch.version.cuda is not None and have_nvcc
    if flag == "0":
        return False
    if flag == "1":
        if torch.version.cuda is None:
            sys.exit(f"contres: CONTRES_CUDA=1 but torch {torch.__version__} is not a CUDA build; "
                     "install a CUDA build of torch or unset CONTRES_CUDA")
        if not have_nvcc:
            sys.exit("contres: CONTRES_CUDA=1 but nvcc was not found; set CUDA_HOME to the CUDA toolkit")
        return True
    if flag:
        sys.exit(f"contres: CONTRES_CUDA must be 0, 1 or unset, got {flag!r}")
    return possible


def _host_flags():
    flags = ["-O3"]
    if os.environ.get("CONTRES_NATIVE", "1") != "0" and platform.machine() in ("x86_64", "AMD64"):
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
            if all(f" {flag}" in cpuinfo for flag in ("avx2", "fma", "f16c")):
                flags += ["-mavx2", "-mfma", "-mf16c"]  # what at::vec's AVX2 code needs
        except OSError:
            pass
    return flags


def _extension():
    with_cuda = _want_cuda()
    sources = [str(p.relative_to(HERE)) for sub in ("", "driver", "cpu")
               for p in sorted((HERE / "csrc" / sub).glob("*.cpp"))]
    macros = [("CONTRES_TORCH_VERSION", f'"{torch.__version__}"')]
    include_dirs = [str(HERE / "csrc")]
    cxx = _host_flags()
    if not with_cuda:
        return cpp_extension.CppExtension("contres._C", sources, include_dirs=include_dirs, define_macros=macros,
                                          extra_compile_args={"cxx": cxx})
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # no GPU to ask; Hopper is the tuned target
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(
        f"{major}.{minor}" for major, minor in
        sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))
    sources += [str(p.relative_to(HERE)) for pattern in ("*.cu", "*.cpp")
                for p in sorted((HERE / "csrc" / "cuda").rglob(pattern))]
    macros += [("CONTRES_WITH_CUDA", None), ("CONTRES_CUDA_VERSION", f'"{torch.version.cuda}"'),
               ("CONTRES_CUDA_ARCHS", f'"{archs}"')]
    # ATen/cuda headers include cuBLAS/cuSPARSE headers that ship with the nvidia pip packages.
    for site in map(Path, sys.path):
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include", "nvidia/cublas/include",
                    "nvidia/cusparse/include"):
            if (site / sub).is_dir():
                include_dirs.append(str(site / sub))
    nvcc = ["-O3", "-lineinfo"]
    return cpp_extension.CUDAExtension("contres._C", sources, include_dirs=include_dirs, define_macros=macros,
                                       extra_compile_args={"cxx": cxx, "nvcc": nvcc})


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
