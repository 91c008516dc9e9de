"""Python child processes that run this very contres (tests, benchmarks, scripts).

A child started with a replaced PYTHONPATH, or from another working directory, can import another copy of contres
(an installed one instead of the in-place build under test) and report on the wrong build. So a child gets the
parent's environment with PYTHONPATH prepended, never replaced, and asserts before anything else that it
imported the same contres file as its parent.
"""
from __future__ import annotations

import os
import sys

PARENT_FILE = "CONTRES_PARENT_FILE"  # the parent's contres/__init__.py, for the child to compare with its own

# Runs first in every child: plain Python, so that it checks whatever copy of contres the child found.
_PRELUDE = (
    "import os, sys\n"
    "import contres\n"
    f"_want, _got = os.environ[{PARENT_FILE!r}], os.path.realpath(contres.__file__)\n"
    "if _got != _want:\n"
    "    sys.exit(f'contres: this child process imported {_got}, its parent {_want}')\n"
    "del _want, _got\n"
)


def contres_file() -> str:
    """This process's contres/__init__.py, resolved."""
    import contres

    return os.path.realpath(contres.__file__)


def child_env(*paths: str, env: dict | None = None) -> dict:
    """The environment for a Python child: `env` (default: this process's) with `paths` and the directory this
    contres is imported from put in front of PYTHONPATH (what was there stays, after them), and PARENT_FILE
    naming this contres for the child's check."""
    out = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(contres_file()))
    front = [os.path.abspath(p) for p in paths] + [root]
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(front + rest)
    out[PARENT_FILE] = contres_file()
    return out


def python_command(script: str | None = None, *args: str, code: str | None = None) -> list:
    """The command line of a Python child (run it with env=child_env(...)) that first checks it imported the
    parent's contres, then runs `script` with `args` as __main__ (its directory first on sys.path, as `python
    script` does) or the source `code`."""
    if (script is None) == (code is None):
        raise ValueError("python_command takes a script or code, not both")
    if code is not None:
        return [sys.executable, "-c", _PRELUDE + code, *args]
    run = ("import runpy\n"
           "sys.argv = sys.argv[1:]\n"
           "sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))\n"
           "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return [sys.executable, "-c", _PRELUDE + run, os.path.abspath(script), *args]


def assert_same_contres(parent_file: str) -> None:
    """In a child started otherwise (multiprocessing's spawn): its contres must be the parent's file."""
    got = contres_file()
    if got != parent_file:
        raise RuntimeError(f"contres: this child process imported {got}, its parent {parent_file}")
