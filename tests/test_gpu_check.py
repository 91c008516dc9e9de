"""scripts/gpu_check.sh, the one command of a GPU draw, checked here so that a typo cannot waste one: its dry run
(every command it would run exists and parses, every test selection collects tests, in the planned order), and
the pieces that name a crash -- the preloaded backtrace and the log reader -- on real crashes of this CPU."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check_tools  # noqa: E402

# The groups, in the order the run must take them: the never-run code before the broad group and the benchmark,
# the sanitizer last.
ORDER = ["facts", "build", "libstdc++ of its own in _C.so", "foreign tensors on CUDA", "fused graph fwd_single",
         "fused graph conv_bias_act", "fused graph conv_axpy", "fused graph dgrad_gate", "fused graph dgrad_add",
         "fused graph conv_gate", "fused graph wgrad", "chains on CUDA", "CUDA graphs (tests/test_cuda_graphs.py -v)",
         "fusion and validation, xdist with worker restarts", "backtrace of the first crashing test id",
         "broad CUDA group", "benchmark: every contres path", "benchmark: compiled", "benchmark: torchdiffeq",
         "compute-sanitizer memcheck"]


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_checks_every_command(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "dry run: status 0" in out and "ERROR" not in out, out
    plans = [line[len("plan: "):] for line in out.splitlines() if line.startswith("plan: ")]
    positions = []
    for name in ORDER:
        hits = [i for i, p in enumerate(plans) if p.startswith(name)]
        assert hits, f"group {name!r} missing from the plan:\n" + "\n".join(plans)
        positions.append(hits[0])
    assert positions == sorted(positions), "groups out of order:\n" + "\n".join(plans)
    assert out.count("check: pytest collects") == 4 and out.count("check: benchmark arguments parse") == 3, out
    assert not (ROOT / "build" / "gpu-check-built").exists()
    for path in (tmp_path / "out").iterdir():  # the dry run writes nothing but its summary
        assert path.name == "summary.txt", path


def test_header_names_the_carried_wheels():
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    for wheel in ("nvidia_cudnn_frontend-1.32.0", "pytest_xdist-", "execnet-", "carry [\".whl\"]"):
        assert wheel in header, wheel


def compiler():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def segv_lib(tmp_path_factory):
    if not compiler():
        pytest.skip("no C compiler")
    lib = tmp_path_factory.mktemp("segv") / "libsegv_backtrace.so"
    subprocess.run([compiler(), "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(lib),
                    str(ROOT / "scripts" / "segv_backtrace.c")], check=True, timeout=120)
    return lib


def test_a_crash_prints_its_frames_and_still_dies_of_its_signal(segv_lib):
    env = dict(os.environ, LD_PRELOAD=str(segv_lib), PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == -11, proc.returncode  # SIGSEGV: the shell's 139, not a timeout's 124
    assert "Fatal Python error: Segmentation fault" in proc.stderr  # Python's frames first
    assert "==== segv_backtrace: fatal signal 11" in proc.stderr and "_ctypes" in proc.stderr, proc.stderr


def test_frames_in_a_library_become_functions_and_lines(tmp_path, segv_lib, capsys):
    """symbolize: a crash inside a library built with -g (as _C.so is) is named by function and source line."""
    if shutil.which("addr2line") is None:
        pytest.skip("addr2line not found")
    (tmp_path / "crashy.c").write_text("int crash_here(int *p) {\n  return *p + 1;\n}\n")
    lib = tmp_path / "libcrashy.so"
    subprocess.run([compiler(), "-shared", "-fPIC", "-g", "-O0", "-o", str(lib), str(tmp_path / "crashy.c")],
                   check=True, timeout=120)
    code = f"import ctypes; ctypes.CDLL({str(lib)!r}).crash_here(None)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, LD_PRELOAD=str(segv_lib)), timeout=60)
    (tmp_path / "crash.log").write_text(proc.stderr)
    assert proc.returncode == -11 and "libcrashy.so(" in proc.stderr, proc.stderr
    gpu_check_tools.symbolize(str(lib), [str(tmp_path / "crash.log")])
    out = capsys.readouterr().out
    assert "crash_here" in out and "crashy.c:2" in out, out


def test_the_log_reader_names_the_crashed_test(tmp_path, capsys):
    logs = {
        "xdist.log": "gw1 [12]\n....\n[gw1] node down: Not properly terminated\nFAILED tests/test_cuda_graphs.py::"
                     "test_replays[euler-double_sym-tanh-2-states] - worker 'gw1' crashed while running "
                     "'tests/test_cuda_graphs.py::test_replays[euler-double_sym-tanh-2-states]'\n",
        "verbose.log": "tests/test_cuda_graphs.py::test_a PASSED [ 20%]\ntests/test_cuda_graphs.py::test_b[x-1] "
                       "Fatal Python error: Segmentation fault\n",
        "foreign.log": "case states empty\nraised states empty: ValueError: ...\ncase mask truncated\n"
                       "==== segv_backtrace: fatal signal 11, C/C++ frames\n",
        "clean.log": "tests/test_x.py::test_a PASSED\n1 passed\n",
    }
    expected = {"xdist.log": "tests/test_cuda_graphs.py::test_replays[euler-double_sym-tanh-2-states]",
                "verbose.log": "tests/test_cuda_graphs.py::test_b[x-1]", "foreign.log": "foreign case: mask truncated",
                "clean.log": None}
    for name, text in logs.items():
        (tmp_path / name).write_text(text)
        rc = gpu_check_tools.crashed([str(tmp_path / name)])
        got = capsys.readouterr().out.strip()
        assert (got or None) == expected[name] and rc == (0 if expected[name] else 1), (name, got)


def test_xdist_names_a_crashing_test_and_goes_on(tmp_path, segv_lib):
    """The pipeline of the never-run group on a real crash: a test that segfaults under pytest-xdist with worker
    restarts; the others still run, and the log reader names it."""
    pytest.importorskip("xdist")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_crash.py").write_text(
        "import ctypes\n\ndef test_before():\n    pass\n\ndef test_segv():\n    ctypes.string_at(0)\n\n"
        "def test_after():\n    pass\n")
    env = dict(os.environ, LD_PRELOAD=str(segv_lib), PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "-n", "2",
                           "--max-worker-restart", "4", "tests/test_crash.py"], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=240)
    log = tmp_path / "run.log"
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 1 and "2 passed" in proc.stdout, proc.stdout[-2000:]
    assert "segv_backtrace: fatal signal 11" in log.read_text()
    assert gpu_check_tools.crashed([str(log)]) == 0
