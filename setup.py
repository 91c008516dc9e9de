"""Build of contres._C: the CPU kernels always, the CUDA kernels when asked for or when possible.

Environment:
  CONTRES_CUDA=0|1       0: never build CUDA; 1: build CUDA or fail; unset: build CUDA when torch is a CUDA
                         build and nvcc is found.
  TORCH_CUDA_ARCH_LIST   architectures to compile for (default: the visible GPUs, else "8.0;9.0+PTX").
  CUDA_HOME              toolkit root (default: /usr/local/cuda when it exists).
  CONTRES_CUDNN_FUSION=0|1  the fused cuDNN frontend graphs of one step (csrc/cuda/cudnn_step), part of a CUDA
                         build: 0: never; 1: build them or fail; unset: build them when the headers and libraries
                         below are found.
  CUDNN_FRONTEND_INCLUDE directory holding cudnn_frontend.h (default: site-packages/include, where
                         `pip install nvidia-cudnn-frontend` puts it).
  CUDNN_INCLUDE          directory holding cudnn.h (default: $CUDNN_HOME/include, site-packages/nvidia/cudnn/include,
                         the CUDA toolkit's include).
  CUDNN_HOME             cuDNN root with include/ and lib/ (default: the nvidia-cudnn pip package torch uses).
  MAX_JOBS               parallel compile jobs (default: from CPU count and free memory).
  CONTRES_NATIVE=0       do not add -mavx2 -mfma -mf16c on x86 hosts that have them.
"""
import os
import platform
import shutil
import subprocess
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


def _site_dirs():
    return [Path(p) for p in sys.path if p and Path(p).is_dir()]


def _first(candidates):
    return next((Path(c) for c in candidates if c and Path(c).exists()), None)


def _cudnn_fusion():
    """Include directories and link arguments of the fused cuDNN graphs, or None to build without them.

    They need the header-only cuDNN frontend, cudnn.h, and the libcudnn.so.9 and libnvrtc torch itself loads (the
    frontend calls NVRTC): linked by full path, so the extension records the same sonames as libtorch_cuda."""
    flag = os.environ.get("CONTRES_CUDNN_FUSION", "").strip()
    if flag not in ("", "0", "1"):
        sys.exit(f"contres: CONTRES_CUDNN_FUSION must be 0, 1 or unset, got {flag!r}")
    if flag == "0":
        return None
    sites = _site_dirs()
    cuda_home = Path(cpp_extension.CUDA_HOME or "/usr/local/cuda")
    cudnn_home = os.environ.get("CUDNN_HOME")
    frontend = _first([os.environ.get("CUDNN_FRONTEND_INCLUDE") and Path(os.environ["CUDNN_FRONTEND_INCLUDE"],
                                                                        "cudnn_frontend.h")]
                      + [s / "include" / "cudnn_frontend.h" for s in sites])
    cudnn_h = _first([os.environ.get("CUDNN_INCLUDE") and Path(os.environ["CUDNN_INCLUDE"], "cudnn.h"),
                      cudnn_home and Path(cudnn_home, "include", "cudnn.h")]
                     + [s / "nvidia" / "cudnn" / "include" / "cudnn.h" for s in sites]
                     + [cuda_home / "include" / "cudnn.h"])
    libcudnn = _first([cudnn_home and Path(cudnn_home, d, "libcudnn.so.9") for d in ("lib", "lib64")]
                      + [s / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9" for s in sites]
                      + [cuda_home / "lib64" / "libcudnn.so.9"])
    cuda_major = (torch.version.cuda or "0").split(".")[0]
    nvrtc_packages = [s / "nvidia" / sub for s in sites for sub in (f"cu{cuda_major}", "cuda_nvrtc")]
    nvrtc_h = _first([p / "include" / "nvrtc.h" for p in nvrtc_packages] + [cuda_home / "include" / "nvrtc.h"])
    libnvrtc = _first([p / "lib" / f"libnvrtc.so.{cuda_major}" for p in nvrtc_packages]
                      + [cuda_home / "lib64" / f"libnvrtc.so.{cuda_major}"])
    missing = [what for what, found in (("the cuDNN frontend headers (cudnn_frontend.h)", frontend),
                                         ("cudnn.h", cudnn_h), ("libcudnn.so.9", libcudnn), ("nvrtc.h", nvrtc_h),
                                         (f"libnvrtc.so.{cuda_major}", libnvrtc)) if not found]
    if missing:
        why = (", ".join(missing) + " not found; `pip install nvidia-cudnn-frontend` provides the headers (or set "
               "CUDNN_FRONTEND_INCLUDE; CUDNN_INCLUDE / CUDNN_HOME for cuDNN itself)")
        if flag == "1":
            sys.exit(f"contres: CONTRES_CUDNN_FUSION=1 but the fused cuDNN graphs cannot be built: {why}")
        print(f"contres: building without the fused cuDNN graphs (csrc/cuda/cudnn_step): {why}", file=sys.stderr)
        return None
    lib_dirs = sorted({str(libcudnn.parent), str(libnvrtc.parent)})
    return {"include_dirs": [str(frontend.parent), str(cudnn_h.parent), str(nvrtc_h.parent)],
            "link_args": [str(libcudnn), str(libnvrtc)] + [f"-Wl,-rpath,{d}" for d in lib_dirs]}


def _report_toolchain():
    """Prints the compiler and the libstdc++ this Python has loaded (torch's): a build whose code reached another
    libstdc++ than the one loaded crashed a GPU run (scripts/check_so_symbols.py checks the result)."""
    cxx = os.environ.get("CXX") or "c++"

    def first_line(*cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.splitlines()[0] if out else ""

    linked = first_line(cxx, "-print-file-name=libstdc++.so.6")
    loaded = ""
    try:
        with open("/proc/self/maps") as maps:
            loaded = next((line.split()[-1] for line in maps if "/libstdc++.so" in line), "")
    except OSError:
        pass
    linked, loaded = (os.path.realpath(p) if p and os.path.exists(p) else (p or "unknown") for p in (linked, loaded))
    print(f"contres build: compiler {cxx}: {first_line(cxx, '--version') or 'not found'}")
    print(f"contres build: libstdc++ of the compiler {linked}; loaded by this Python {loaded}")
    if os.path.basename(linked) != os.path.basename(loaded):
        print("contres build: WARNING: the compiler's libstdc++ is not the one Python loads; the extension must not "
              "carry libstdc++ code of its own (python scripts/check_so_symbols.py contres/_C*.so)")


def _extension():
    _report_toolchain()
    with_cuda = _want_cuda()
    sources = [str(p.relative_to(HERE)) for sub in ("", "driver", "cpu")
               for p in sorted((HERE / "csrc" / sub).glob("*.cpp"))]
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    macros = [("CONTRES_TORCH_VERSION", f'"{torch.__version__}"'),
              ("CONTRES_TORCH_VERSION_NUM", str(100 * major + minor))]  # 2.14 -> 214, for version-specific code
    include_dirs = [str(HERE / "csrc")]
    cxx = _host_flags()
    # libstdc++ code instantiated in our objects stays private to _C.so (csrc/private_std.map says why).
    link_args = [f"-Wl,--version-script={HERE / 'csrc' / 'private_std.map'}"]
    if not with_cuda:
        return cpp_extension.CppExtension("contres._C", sources, include_dirs=include_dirs, define_macros=macros,
                                          extra_compile_args={"cxx": cxx}, extra_link_args=link_args)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"  # no GPU to ask: Ampere, Hopper, and PTX for newer
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(
        f"{major}.{minor}" for major, minor in
        sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))
    sources += [str(p.relative_to(HERE)) for pattern in ("*.cu", "*.cpp")
                for p in sorted((HERE / "csrc" / "cuda").rglob(pattern)) if "cudnn_step" not in p.parts]
    macros += [("CONTRES_WITH_CUDA", None), ("CONTRES_CUDA_VERSION", f'"{torch.version.cuda}"'),
               ("CONTRES_CUDA_ARCHS", f'"{archs}"')]
    # ATen/cuda headers include cuBLAS/cuSPARSE headers that ship with the nvidia pip packages.
    for site in map(Path, sys.path):
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include", "nvidia/cublas/include",
                    "nvidia/cusparse/include"):
            if (site / sub).is_dir():
                include_dirs.append(str(site / sub))
    nvcc = ["-O3", "-lineinfo"]
    fusion = _cudnn_fusion()
    if fusion is not None:
        sources += [str(p.relative_to(HERE)) for p in sorted((HERE / "csrc" / "cuda" / "cudnn_step").glob("*.cpp"))]
        macros.append(("CONTRES_WITH_CUDNN_FUSION", None))
        include_dirs += [d for d in fusion["include_dirs"] if d not in include_dirs]
        link_args += fusion["link_args"]
    return cpp_extension.CUDAExtension("contres._C", sources, include_dirs=include_dirs, define_macros=macros,
                                       extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link_args)


def _torch_requirement():
    """The torch release this build is compiled against, exactly: pip then refuses a wheel beside another torch
    instead of an import failing on undefined symbols. The local label (+cpu, +cu130) is left out, so a build
    against a CUDA torch also pins what PyPI calls that release; a CUDA build beside a CPU torch of the same
    release says so at import (contres.build_info())."""
    return f"torch=={torch.__version__.split('+')[0]}"


setup(
    install_requires=[_torch_requirement(), "numpy", "tqdm"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
