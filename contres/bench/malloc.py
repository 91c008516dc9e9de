"""glibc allocator settings for the CPU cases (--malloc).

With glibc's defaults, large blocks are mmap'ed and trimmed on free, so eager PyTorch pays fresh page faults on its
big temporaries every call, which flatters the fused op's speed-up. "no-page-faults" keeps freed memory in the heap.
glibc reads these variables once, at process start, so a setting other than the current process's runs the cases
in a child process with that environment.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

from .._subprocess import child_env, python_command

SETTINGS = {
    "default": {},
    "no-page-faults": {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"},
}
_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def current() -> str:
    """The setting this process runs under: a name of SETTINGS, or 'custom' for other values of the variables."""
    values = {k: os.environ[k] for k in _VARIABLES if k in os.environ}
    return next((name for name, env in SETTINGS.items() if env == values), "custom")


def requested(choice) -> list:
    """The settings of --malloc: None -> the current one only, 'both' -> both SETTINGS."""
    if choice is None:
        return [current()]
    return list(SETTINGS) if choice == "both" else [choice]


def run_in_child(setting: str, args) -> list:
    """The rows of `args` (argparse namespace of contres.bench) run in a fresh process under `setting`."""
    env = child_env(env={k: v for k, v in os.environ.items() if k not in _VARIABLES})  # the same contres
    env.update(SETTINGS[setting])
    child_args = dict(vars(args), malloc=setting, json=None, plot=None)
    with tempfile.TemporaryDirectory() as tmp:
        args_path, out_path = os.path.join(tmp, "args.json"), os.path.join(tmp, "rows.json")
        with open(args_path, "w") as f:
            json.dump(child_args, f)
        code = f"from contres.bench import malloc; malloc.child({args_path!r}, {out_path!r})"
        subprocess.run(python_command(code=code), env=env, check=True)
        with open(out_path) as f:
            return json.load(f)["rows"]


def child(args_path: str, out_path: str) -> None:
    """The child's side of run_in_child: run the cases of the saved arguments, save their rows."""
    from . import cli, report

    with open(args_path) as f:
        rows, _ = cli.run(argparse.Namespace(**json.load(f)))
    report.write_json(out_path, rows, {})
