"""Child processes test the build under test (contres._subprocess): their PYTHONPATH is the parent's with this contres
in front, and a child that imports another copy of contres stops before doing anything."""
from __future__ import annotations

import os
import subprocess

import contres
from contres._subprocess import PARENT_FILE, child_env, contres_file, python_command


def test_child_env_prepends_and_keeps_the_parents_environment(tmp_path):
    parent = {"PYTHONPATH": os.pathsep.join(["/somewhere/else", "/and/more"]), "KEEP_ME": "1"}
    env = child_env(str(tmp_path), env=parent)
    root = os.path.dirname(os.path.dirname(os.path.realpath(contres.__file__)))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), root, "/somewhere/else", "/and/more"]
    assert env["KEEP_ME"] == "1" and env[PARENT_FILE] == contres_file()
    assert "PYTHONPATH" not in child_env(env={}) or child_env(env={})["PYTHONPATH"] == root


def test_child_imports_the_parents_contres():
    code = "import contres, os; print(os.path.realpath(contres.__file__))"
    proc = subprocess.run(python_command(code=code), env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == contres_file()


def test_child_that_finds_another_contres_stops(tmp_path):
    """Another copy of contres first on the path: the child's first statement exits with a message naming both."""
    fake = tmp_path / "contres"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    script = tmp_path / "child.py"
    script.write_text("print('the child ran')\n")
    elsewhere = tmp_path / "cwd"  # python -c puts its working directory first on sys.path
    elsewhere.mkdir()
    proc = subprocess.run(python_command(str(script)), env=child_env(str(tmp_path)), cwd=str(elsewhere),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "the child ran" not in proc.stdout
    assert "this child process imported" in proc.stderr and str(fake) in proc.stderr
    assert contres_file() in proc.stderr


def test_script_child_runs_as_main_with_its_directory_on_the_path(tmp_path):
    (tmp_path / "helper_module.py").write_text("VALUE = 42\n")
    script = tmp_path / "child.py"
    script.write_text("import sys\nimport helper_module\nprint(__name__, helper_module.VALUE, sys.argv[1:])\n")
    proc = subprocess.run(python_command(str(script), "a", "b"), env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "__main__ 42 ['a', 'b']"
