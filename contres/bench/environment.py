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


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


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
            "platform": platform.platform(), "devices": {d: device_name(d) for d in devices},
            "build_info": _ext.build_info(), "torchdiffeq": tdq, "num_threads": torch.get_num_threads(),
            "args": vars(args)}
