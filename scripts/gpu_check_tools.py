"""Helpers of scripts/gpu_check.sh, in Python so that the CPU test suite can run them.

    python scripts/gpu_check_tools.py facts                 the toolchain: compiler, libstdc++ loaded, torch, cuDNN,
                                                            the cuDNN frontend, the GPU, the debugging tools
    python scripts/gpu_check_tools.py crashed LOG...        the first test (or case) a crash killed, from the logs
    python scripts/gpu_check_tools.py symbolize SO LOG...   functions and lines of SO's frames in segv_backtrace
                                                            output (addr2line)
    python scripts/gpu_check_tools.py merge-json OUT IN...  one benchmark JSON of several (rows joined)
With GPU_CHECK_DRY_RUN=1 all but facts only check that they are given arguments.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _run(*cmd, timeout=60) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({exc.__class__.__name__}: {exc})"
    return (proc.stdout + proc.stderr).strip()


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else "(nothing)"


def loaded_libstdcxx() -> str:
    """The libstdc++ this process has mapped (after importing torch: the one the extension will meet)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "/libstdc++.so" in line:
                    return os.path.realpath(line.split()[-1])
    except OSError:
        pass
    return "(none mapped)"


def glibcxx_max(path: str) -> str:
    """The newest GLIBCXX_ symbol version a libstdc++ provides."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return "?"
    versions = {tuple(int(p) for p in m.group(1).split(b".")) for m in re.finditer(rb"GLIBCXX_(\d+\.\d+(?:\.\d+)?)",
                                                                                   data)}
    return "GLIBCXX_" + ".".join(map(str, max(versions))) if versions else "?"


def frontend_version() -> str:
    include = os.environ.get("CUDNN_FRONTEND_INCLUDE")
    dirs = [Path(include)] if include else []
    dirs += [Path(p) / "include" for p in sys.path if p]
    for d in dirs:
        header = d / "cudnn_frontend_version.h"
        if header.is_file():
            m = re.search(r"CUDNN_FRONTEND_VERSION\s+(\d+)", header.read_text())
            if m:
                v = int(m.group(1))
                return f"{v // 10000}.{v // 100 % 100}.{v % 100} ({header})"
    return "not found"


def facts() -> int:
    print(f"python: {sys.version.split()[0]} at {sys.executable}")
    cxx = os.environ.get("CXX") or "c++"
    print(f"compiler: {cxx}: {_first_line(_run(cxx, '--version'))}")
    print(f"compiler's libstdc++: {os.path.realpath(_first_line(_run(cxx, '-print-file-name=libstdc++.so.6')))}")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    print(f"nvcc: {_run(nvcc, '--version').splitlines()[-1] if os.path.exists(nvcc) else 'not found'}")
    try:
        import torch
    except ImportError as exc:
        print(f"torch: not importable ({exc})")
        return 1
    lib = loaded_libstdcxx()
    print(f"libstdc++ loaded with torch: {lib} (newest {glibcxx_max(lib)})")
    print(f"torch: {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}"
          + (f" sm_{''.join(map(str, torch.cuda.get_device_capability()))}" if torch.cuda.is_available() else ""))
    print(f"cuDNN frontend headers: {frontend_version()}")
    try:
        import xdist
        print(f"pytest-xdist: {xdist.__version__}")
    except ImportError:
        print("pytest-xdist: not installed")
    tools = {t: shutil.which(t) or "-" for t in ("gdb", "cuda-gdb", "compute-sanitizer", "addr2line", "nm", "cc")}
    print("tools: " + ", ".join(f"{t} {p}" for t, p in tools.items()))
    return 0


NODEID = r"tests/[\w/.-]+\.py::[^\s']+"


def crashed(paths) -> int:
    """Prints the test id (or foreign case) a crash killed first, if any."""
    for path in paths:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        m = re.search(r"crashed while running '(" + NODEID + ")'", text)  # pytest-xdist
        if m:
            print(m.group(1))
            return 0
        fatal = re.search(r"Fatal Python error|==== segv_backtrace: fatal signal", text)
        if fatal:  # pytest -v writes the test id before the test runs
            ids = re.findall(r"(" + NODEID + r")", text[:fatal.start()])
            if ids:
                print(ids[-1])
                return 0
            cases = re.findall(r"^case (.+)$", text[:fatal.start()], re.M)  # tests/foreign_cases.py
            if cases:
                print(f"foreign case: {cases[-1]}")
                return 0
    return 1


def symbolize(so: str, paths) -> int:
    """addr2line of every frame of `so` (by file name) in segv_backtrace output: "(+0xOFF)" is an offset in the
    library, "(symbol+0xOFF)" one from an exported symbol (looked up with nm). Return addresses are taken one byte
    back, so the line shown is the call's."""
    name = re.escape(Path(so).name)
    frames = []
    for path in paths:
        text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
        frames += re.findall(name + r"\(([^)+]*)\+(0x[0-9a-f]+)\)", text)
    if not frames:
        return 0
    addr2line, nm = shutil.which("addr2line"), shutil.which("nm")
    if not addr2line:
        print(f"addr2line not found; frames in {so}: " + " ".join(f"{s}+{o}" for s, o in dict.fromkeys(frames)))
        return 0
    symbols = {}
    if nm and any(sym for sym, _ in frames):
        for line in _run(nm, "--defined-only", so).splitlines() + _run(nm, "-D", "--defined-only", so).splitlines():
            parts = line.split()
            if len(parts) == 3:
                symbols.setdefault(parts[2], int(parts[0], 16))
    addresses = []
    for sym, off in dict.fromkeys(frames):
        if sym and sym not in symbols:
            continue
        addresses.append(hex(symbols.get(sym, 0) + int(off, 16) - 1))
    print(f"frames in {so}:")
    for line in _run(addr2line, "-f", "-C", "-i", "-e", so, *addresses).splitlines():
        print("  " + line)
    return 0


def merge_json(out: str, inputs) -> int:
    merged = None
    for path in inputs:
        if not Path(path).is_file():
            continue
        data = json.loads(Path(path).read_text())
        if merged is None:
            merged = data
        else:
            merged["rows"] += data["rows"]
    if merged is not None:
        Path(out).write_text(json.dumps(merged, indent=2))
    return 0 if merged is not None else 1


def main(argv) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if os.environ.get("GPU_CHECK_DRY_RUN") == "1" and cmd in ("crashed", "symbolize", "merge-json"):
        return 0 if args else 2  # the dry run of gpu_check.sh: the logs do not exist yet
    if cmd == "facts":
        return facts()
    if cmd == "crashed":
        return crashed(args)
    if cmd == "symbolize" and args:
        return symbolize(args[0], args[1:])
    if cmd == "merge-json" and args:
        return merge_json(args[0], args[1:])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
