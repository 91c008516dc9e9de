"""Where a run happened: devices, their names, the contres commit, versions."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Optional

import torch

from .. import _ext


def available_devices() -> list:
    devices = ["cpu"]
    if torch.cuda.is_available() and _ext.build_info().get("cuda_kernels"):
        devices.append("cuda")
    return devices


def select_devices(choice: Optional[str]) -> list:
    if choice in (None, "all"):
        return available_devices()
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("contres.bench: --device cuda but torch.cuda.is_available() is False")
    return [choice]


def _cpu_flag(name: str, flags: set) -> bool:
    """Whether the CPU has an ISA extension: torch's own check where it has one, else /proc/cpuinfo's flags."""
    check = getattr(torch.cpu, f"_is_{name}_supported", None)
    if check is not None:
        try:
            return bool(check())
        except RuntimeError:
            pass
    return name in flags


def cpu_info() -> dict:
    """The CPU's model, the vector extensions that matter for contres (AVX2, AVX-512, AVX512-BF16, AMX), and
    native_bf16: whether bf16 convolutions run on bf16 hardware (avx512_bf16 or AMX) rather than in emulation,
    i.e. whether bf16 autocast can be faster than float32 here."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    info = {"model": model, "avx2": _cpu_flag("avx2", flags), "avx512": _cpu_flag("avx512", flags) or
            "avx512f" in flags, "avx512_bf16": _cpu_flag("avx512_bf16", flags),
            "amx": _cpu_flag("amx_tile", flags) or "amx_bf16" in flags,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    info["native_bf16"] = info["avx512_bf16"] or info["amx"]
    return info


def bf16_support(info: dict) -> str:
    """One phrase: which bf16 hardware the CPU has."""
    if info["amx"]:
        return "AMX, native bf16"
    if info["avx512_bf16"]:
        return "AVX512-BF16, native bf16"
    isa = "AVX-512" if info["avx512"] else "AVX2" if info["avx2"] else "no AVX2"
    return f"{isa}, no native bf16 (bf16 convolutions emulated)"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    info = cpu_info()
    return f"{info['model']} ({torch.get_num_threads()} threads; {bf16_support(info)})"


def commit() -> Optional[str]:
    """The short commit of the contres source tree when contres runs from a git checkout ("+dirty" with
    uncommitted changes to tracked files), else $CONTRES_COMMIT (set it where a copy of the tree runs without its
    .git, e.g. on a build machine), else None."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stated = os.environ.get("CONTRES_COMMIT") or None

    def git(*cmd):
        return subprocess.run(["git", "-C", package, *cmd], capture_output=True, text=True, timeout=10)
    try:
        top = git("rev-parse", "--show-toplevel")
        # an installed copy inside some other repository (a venv in a checkout) is not that repository's HEAD
        if top.returncode != 0 or not os.path.samefile(os.path.join(top.stdout.strip(), "contres"), package):
            return stated
        head = git("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return stated
    return head + ("+dirty" if dirty else "")


def environment(devices, args) -> dict:
    from .. import __version__

    try:
        import torchdiffeq
        tdq = getattr(torchdiffeq, "__version__", "unknown")
    except ImportError:
        tdq = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "contres_version": __version__, "commit": commit(),
            "torch_version": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "devices": {d: device_name(d) for d in devices}, "cpu": cpu_info(),
            "build_info": _ext.build_info(), "torchdiffeq": tdq, "num_threads": torch.get_num_threads(),
            "args": vars(args)}
