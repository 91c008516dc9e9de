"""The training and sweep commands on a tiny budget (in-process), and a training smoke test."""
from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn (pip install contres[train])")

from contres import sweep, train  # noqa: E402

TINY = ["--widths", "4", "8", "--epochs", "1", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return train.load_digits()


def test_digits_split_is_fixed_and_stratified(digits):
    again = train.load_digits()
    assert torch.equal(digits.train_x, again.train_x) and torch.equal(digits.test_y, again.test_y)
    assert digits.train_x.shape[1:] == (1, 8, 8) and len(digits.train_x) + len(digits.test_x) == 1797
    assert abs(digits.train_x.mean().item()) < 1e-5
    counts = torch.bincount(digits.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # every class ~20 % of its images


@pytest.fixture(scope="module")
def digits16():
    return train.load_digits16()


def test_digits16_is_fixed_shaped_and_few_shot(digits16):
    again = train.load_data(train.default_config(dataset="digits16", seed=3))  # --seed does not change the task
    for a, b in ((digits16.train_x, again.train_x), (digits16.test_x, again.test_x),
                 (digits16.train_y, again.train_y), (digits16.test_y, again.test_y)):
        assert torch.equal(a, b)
    size = train.DIGITS16_CANVAS
    assert digits16.train_x.shape == (300, 1, size, size) and digits16.test_x.shape == (1497, 1, size, size)
    assert digits16.train_x.dtype == torch.float32 and digits16.train_y.dtype == torch.int64
    assert torch.equal(torch.bincount(digits16.train_y), torch.full((10,), train.DIGITS16_TRAIN_PER_CLASS))
    assert torch.equal(torch.bincount(digits16.train_y) + torch.bincount(digits16.test_y),
                       torch.bincount(torch.tensor(__import__("sklearn.datasets").datasets.load_digits().target)))
    assert abs(digits16.train_x.mean().item()) < 1e-5 and abs(digits16.train_x.std().item() - 1) < 1e-5


def test_digits16_images_are_shifted_noisy_digits(digits16):
    """The digits sit at different places (the spread of their centres of brightness: about 1.3 pixels; 0.6 and
    0.4 for the unshifted digits) and carry noise (the corner, which digits hardly ever reach, is not constant)."""
    x = digits16.test_x[:, 0]
    bright = (x - 0.5).clamp_min(0)
    grid = torch.arange(float(x.shape[-1]))
    centre_y = (bright.sum(2) * grid).sum(1) / bright.sum((1, 2))
    centre_x = (bright.sum(1) * grid).sum(1) / bright.sum((1, 2))
    assert centre_y.std() > 1.0 and centre_x.std() > 1.0
    assert x[:, 0, 0].std() > 0.3


def test_digits16_needs_no_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("digits16 must not open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = train.load_digits16()
    assert len(data.train_x) == 300


@pytest.mark.parametrize("smoothness_weight", [0.0, 1e-2])
def test_a_few_steps_reduce_the_loss(digits, smoothness_weight):
    config = train.default_config(widths=[8, 16], n_steps=2, n_controls=2, interp="linear")
    torch.manual_seed(0)
    model = train.build_model(config, digits.in_channels, digits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    x, y = digits.train_x[:128], digits.train_y[:128]
    losses = []
    for _ in range(20):
        loss, ce = train.compute_loss(model, x, y, smoothness_weight)
        assert loss.item() >= ce.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_command_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "result.json"
    result = train.main(TINY + ["--n-steps", "2", "--n-controls", "1", "--json", str(path), "--backend", "fused"])
    data = json.loads(path.read_text())
    for key in ("test_accuracy", "train_loss", "seconds", "params"):
        assert data[key] == result[key]
    assert 0.0 <= data["test_accuracy"] <= 1.0 and data["train_loss"] > 0 and data["params"] > 0
    assert data["backend"] == "fused" and data["world_size"] == 1
    assert data["config"]["n_steps"] == 2 and len(data["loss_curve"]) == 1
    assert "test accuracy" in capsys.readouterr().out


def test_sweep_command_writes_results_and_plots(tmp_path):
    out = tmp_path / "sweep"
    payload = sweep.main(["--out", str(out), "--quick", "--steps", "1", "2", "--controls", "1", "--seeds", "2",
                          "--epochs", "2", "--widths", "4", "--dataset", "digits", "--multilevel", "1"])
    data = json.loads((out / "results.json").read_text())
    fixed = {(r["n_steps"], r["n_controls"]) for r in data["rows"] if r["schedule"] == "fixed"}
    assert fixed == {(1, 1), (2, 1), (2, 2)}  # the grid plus n_controls = n_steps
    multilevel = [r for r in data["rows"] if r["schedule"] == "multilevel"]
    assert {(r["n_steps"], r["n_controls"]) for r in multilevel} == {(2, 1), (2, 2)}  # the finest cells
    assert all(r["steps_curve"] == [1, 2] and r["refine_at"] == [1] for r in multilevel)
    assert len(data["rows"]) == 10 and data["rows"] == payload["rows"]
    for row in data["rows"]:
        for key in ("n_steps", "n_controls", "seed", "test_accuracy", "train_loss", "params", "seconds",
                    "train_seconds", "train_cpu_seconds"):
            assert key in row
        assert len(row["loss_curve"]) == len(row["seconds_curve"]) == len(row["cpu_seconds_curve"]) == 2
        assert row["seconds_curve"][0] < row["seconds_curve"][1] == row["train_seconds"] <= row["seconds"]
        assert 0 < row["cpu_seconds_curve"][0] < row["cpu_seconds_curve"][1] == row["train_cpu_seconds"]
    cell = next(e for e in data["summary"] if e["schedule"] == "fixed" and e["n_steps"] == 2 == e["n_controls"])
    assert cell["seeds"] == 2 and len(cell["loss_curve"]) == len(cell["loss_curve_ci"]) == 2
    table = (out / "results.md").read_text()
    assert "| euler | fixed | 2 | 2 |" in table and "| euler | multilevel 1→2 | 2 | 1 |" in table
    assert "Multilevel training against the fine grid" in table and "| more parameters | euler (2, 2) |" in table
    assert {d["comparison"] for d in data["paired"]} == {"more layers", "more parameters", "multilevel"}
    names = ("accuracy_vs_steps.png", "loss_vs_steps.png", "convergence_euler.png", "multilevel.png")
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        (out / name).unlink()
    sweep.main(["--out", str(out), "--replot"])  # the tables and plots again, from results.json alone
    assert (out / "results.md").read_text() == table and all((out / name).exists() for name in names)
    sweep.main(["--out", str(out), "--replot", "--clock", "cpu"])
    assert "CPU time" in (out / "results.md").read_text() and "CPU time" not in table


def test_sweep_compares_methods_each_on_its_own_steps(tmp_path):
    out = tmp_path / "sweep"
    sweep.main(["--out", str(out), "--steps", "2", "--controls", "1", "--seeds", "1", "--epochs", "1", "--widths",
                "4", "--dataset", "digits", "--methods", "euler", "rk4:1", "leapfrog"])
    data = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["n_steps"], r["n_controls"]) for r in data["rows"]} == {
        ("euler", 2, 1), ("euler", 2, 2), ("rk4", 1, 1), ("leapfrog", 2, 1), ("leapfrog", 2, 2)}
    table = (out / "results.md").read_text()
    assert "| rk4 | fixed | 1 | 1 |" in table and "| leapfrog | fixed | 2 | 2 |" in table


def test_train_command_takes_the_method(tmp_path):
    path = tmp_path / "result.json"
    train.main(TINY + ["--n-steps", "2", "--method", "leapfrog", "--memory", "reversible", "--json", str(path)])
    config = json.loads(path.read_text())["config"]
    assert config["method"] == "leapfrog" and config["memory"] == "reversible"


def test_sweep_grid_and_option_clashes():
    # constant controls beyond n_steps are never used: those cells are left out, but not for linear ones
    assert len(sweep.grid(sweep.STEPS, sweep.CONTROLS)) == 10
    assert len(sweep.grid(sweep.STEPS, sweep.CONTROLS, interp="linear")) == 13
    assert len(sweep.grid(sweep.STEPS, sweep.CONTROLS, ["euler", "rk4"])) == 20
    assert sweep.grid(sweep.STEPS, sweep.CONTROLS, [("rk4", (1, 2))]) == [("rk4", 1, 1), ("rk4", 2, 1), ("rk4", 2, 2)]
    cells = sweep.grid(sweep.STEPS, sweep.CONTROLS, [("euler", None), ("rk4", (1, 2))])
    assert sweep.multilevel_cells(cells, [5, 10, 15]) == [("euler", 8, m) for m in (1, 2, 4, 8)]
    assert sweep.multilevel_cells(cells, [5]) == [("euler", 8, m) for m in (1, 2, 4, 8)] + [
        ("rk4", 2, 1), ("rk4", 2, 2)]
    for bad in (["--n-steps", "4"], ["--methods", "rk4", "--method", "euler"], ["--refine-at", "2"],
                ["--methods", "rk5"], ["--methods", "rk4:0"], ["--methods", "rk4:a"], ["--multilevel", "3", "2"],
                ["--jobs", "0"]):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--out", "x"] + bad)
    args, base = sweep.parse_args(["--out", "x", "--quick", "--layer", "double_sym", "--methods", "euler", "rk4:1,2"])
    assert base.layer == "double_sym" and base.epochs == sweep.QUICK["epochs"] and args.seeds >= 2
    assert args.methods == [("euler", None), ("rk4", (1, 2))]
    assert base.dataset == "digits16" and base.batch_size == 32  # the sweep's defaults for its runs
    _, base = sweep.parse_args(["--out", "x", "--dataset", "digits", "--batch-size", "64"])
    assert base.dataset == "digits" and base.batch_size == 64
    assert sweep.parse_args(["--out", "x"])[0].seeds >= 5


def test_paired_differences_compare_one_choice_seed_by_seed():
    def row(schedule, n, m, seed, loss, accuracy):
        return {"method": "euler", "schedule": schedule, "n_steps": n, "n_controls": m, "seed": seed,
                "train_loss": loss, "test_accuracy": accuracy}

    rows = [row("fixed", 1, 1, 0, 1.0, 0.5), row("fixed", 1, 1, 1, 2.0, 0.4),
            row("fixed", 2, 1, 0, 1.5, 0.4), row("fixed", 2, 1, 1, 2.1, 0.5),
            row("fixed", 2, 2, 0, 1.2, 0.6), row("fixed", 2, 2, 1, 2.2, 0.5),
            row("multilevel", 2, 2, 0, 1.1, 0.7), row("multilevel", 2, 2, 1, 1.9, 0.6)]
    paired = {(d["comparison"], tuple(d["cell"]), tuple(d["against"])): d for d in sweep.paired_differences(rows)}
    assert set(paired) == {("more layers", ("euler", "fixed", 2, 1), ("euler", "fixed", 1, 1)),
                           ("more parameters", ("euler", "fixed", 2, 2), ("euler", "fixed", 2, 1)),
                           ("multilevel", ("euler", "multilevel", 2, 2), ("euler", "fixed", 2, 2))}
    layers = paired["more layers", ("euler", "fixed", 2, 1), ("euler", "fixed", 1, 1)]
    assert layers["train_loss_diff"] == pytest.approx(0.3) and layers["loss_lower"] == 0
    assert layers["train_loss_diff_ci"] == pytest.approx(sweep.mean_ci([0.5, 0.1])[1])
    assert layers["accuracy_higher"] == 1 and layers["seeds"] == 2
    multilevel = paired["multilevel", ("euler", "multilevel", 2, 2), ("euler", "fixed", 2, 2)]
    assert multilevel["loss_lower"] == 2 and multilevel["test_accuracy_diff"] == pytest.approx(0.1)
    assert "| multilevel | euler (2, 2) multilevel | euler (2, 2) |" in sweep.paired_table(list(paired.values()))


def test_mean_ci_is_the_t_interval():
    mean, half = sweep.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and half == pytest.approx(2.7764451 * (2.5 ** 0.5) / 5 ** 0.5, rel=1e-6)  # t(0.975, 4)
    assert sweep.mean_ci([7.0]) == (7.0, 0.0)
    entry = {"seconds_curve": [1.0, 3.0], "loss_curve": [2.0, 1.0]}
    assert sweep.loss_at(entry, 2.0) == 1.5 and sweep.loss_at(entry, 3.0) == 1.0
    assert math.isnan(sweep.loss_at(entry, 0.5)) and math.isnan(sweep.loss_at(entry, 4.0))


def test_cifar10_needs_a_local_folder(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        train.main(["--dataset", "cifar10"])
    with pytest.raises(SystemExit, match="never downloads"):
        train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "missing")])


def test_cifar10_without_torchvision_says_so(tmp_path, monkeypatch):
    (tmp_path / "cifar-10-batches-py").mkdir()
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)  # as if it were not installed
    with pytest.raises(SystemExit, match="torchvision"):
        train.load_cifar10(tmp_path)


def test_cifar10_path_with_a_stand_in_torchvision(tmp_path, monkeypatch):
    """The CIFAR-10 code path on a few random images served by a stand-in for torchvision's CIFAR10 class."""
    import sys
    import types

    import numpy as np

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert not download and root == str(tmp_path)
            n = 48 if train else 16
            rng = np.random.default_rng(int(train))
            self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            self.targets = list(rng.integers(0, 10, size=n))

    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = FakeCIFAR10
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    (tmp_path / "cifar-10-batches-py").mkdir()
    data = train.load_cifar10(tmp_path)
    assert data.train_x.shape == (48, 3, 32, 32) and data.test_x.shape == (16, 3, 32, 32)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    result = train.main(TINY + ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--n-steps", "1",
                                "--batch-size", "16"])
    assert result["config"]["dataset"] == "cifar10" and 0.0 <= result["test_accuracy"] <= 1.0


def test_sweep_runs_in_parallel_processes_as_it_does_serially(digits):
    """--jobs: the runs in worker processes give the rows the serial sweep gives (up to the clock)."""
    _, base = sweep.parse_args(["--out", "x", "--epochs", "1", "--widths", "4", "--dataset", "digits"])
    jobs = sweep.jobs_of([("euler", 1, 1), ("euler", 2, 1)], [], None, seeds=1)
    clockless = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    serial = sweep.run_jobs(base, jobs, digits, n_workers=1)
    parallel = sweep.run_jobs(base, jobs, digits, n_workers=2)
    assert clockless(parallel) == clockless(serial)
    assert [r["n_steps"] for r in parallel] == [1, 2]
