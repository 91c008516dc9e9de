"""The training and sweep commands on a tiny budget (in-process), and a training smoke test."""
from __future__ import annotations

import json

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
                          "--epochs", "2", "--widths", "4"])
    data = json.loads((out / "results.json").read_text())
    cells = {(r["n_steps"], r["n_controls"]) for r in data["rows"]}
    assert cells == {(1, 1), (2, 1), (2, 2)}  # the grid plus n_controls = n_steps
    assert len(data["rows"]) == 6 and data["rows"] == payload["rows"]
    for row in data["rows"]:
        for key in ("n_steps", "n_controls", "seed", "test_accuracy", "train_loss", "params", "seconds"):
            assert key in row
        assert len(row["loss_curve"]) == 2
    assert "| euler | 2 | 2 |" in (out / "results.md").read_text()
    for name in ("accuracy_vs_steps.png", "loss_vs_steps.png", "loss_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_sweep_compares_methods(tmp_path):
    out = tmp_path / "sweep"
    sweep.main(["--out", str(out), "--steps", "2", "--controls", "1", "--seeds", "1", "--epochs", "1", "--widths",
                "4", "--methods", "euler", "rk4", "leapfrog"])
    data = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["n_steps"], r["n_controls"]) for r in data["rows"]} == {
        (m, 2, c) for m in ("euler", "rk4", "leapfrog") for c in (1, 2)}
    table = (out / "results.md").read_text()
    assert "| rk4 | 2 | 1 |" in table and "| leapfrog | 2 | 2 |" in table


def test_train_command_takes_the_method(tmp_path):
    path = tmp_path / "result.json"
    train.main(TINY + ["--n-steps", "2", "--method", "leapfrog", "--memory", "reversible", "--json", str(path)])
    config = json.loads(path.read_text())["config"]
    assert config["method"] == "leapfrog" and config["memory"] == "reversible"


def test_sweep_grid_and_option_clashes():
    assert len(sweep.grid(sweep.STEPS, sweep.CONTROLS)) == 13
    assert len(sweep.grid(sweep.STEPS, sweep.CONTROLS, ["euler", "rk4"])) == 26
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", "x", "--n-steps", "4"])
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", "x", "--methods", "rk4", "--method", "euler"])
    args, base = sweep.parse_args(["--out", "x", "--quick", "--layer", "double_sym"])
    assert base.layer == "double_sym" and base.epochs == sweep.QUICK["epochs"] and args.seeds >= 2


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
