"""README.md starts with the two commands (install + benchmark, install + tests) and CI runs the second."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line == "```bash"][:2]


def test_readme_starts_with_install_bench_and_install_test_commands():
    bench, test = readme_commands()
    for cmd in (bench, test):
        assert "pip install --no-build-isolation" in cmd and "requirements.txt" in cmd
    assert bench.endswith("python -m contres.bench")
    assert "pytest" in test
    head = (ROOT / "README.md").read_text()[:600]
    assert bench in head and test in head, "the commands must be at the top of README.md"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "n == 2" in ci, ".ci/run must take its test command from README.md"


def test_porting_recipes_run():
    """The README's "Porting a model" code runs as written (it checks its own port)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Porting a model", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
