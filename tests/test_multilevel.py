"""Multilevel training: refine() during training keeps the network's function and training goes on."""
from __future__ import annotations

import pytest
import torch

from contres import train
from contres.models import ContinuousResNet


def _model(n_steps, n_controls, interp="constant", std=0.3, dtype=torch.float32):
    torch.manual_seed(0)
    model = ContinuousResNet(1, 10, widths=(4, 8), n_steps=n_steps, n_controls=n_controls, interp=interp)
    model.to(dtype)
    with torch.no_grad():  # controls of some size, so that a change of the function would show
        for block in model.blocks:
            block.weight.normal_(0, std)
            block.bias.normal_(0, std)
    return model.eval()


def _images(n=6, size=8, seed=1):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("interp", ["constant", "linear"])
def test_refining_the_controls_keeps_the_function(interp):
    """Same steps, controls on a nested grid: the same piecewise function of time, so the same network."""
    coarse = _model(4, 2, interp)
    fine = coarse.refine(n_controls=4 if interp == "constant" else 3)
    x = _images()
    torch.testing.assert_close(fine(x), coarse(x), rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in fine.parameters()) > sum(p.numel() for p in coarse.parameters())


def test_refining_the_steps_converges_to_the_ode():
    """Finer steps change the network by the time-stepping error only: halving h halves that change (Euler is
    first order), so refinement keeps the function the coarse grid approximates."""
    x = _images().double()
    model = _model(2, 1, std=0.1, dtype=torch.float64)
    outs = [model.refine(n_steps=n)(x) for n in (2, 4, 8, 16)]
    changes = [(b - a).abs().max().item() for a, b in zip(outs, outs[1:])]
    assert changes[0] > 1e-3
    for before, after in zip(changes, changes[1:]):
        assert 0.4 < after / before < 0.6, changes  # measured 0.57, 0.55 (0.52, 0.51 further on)


def test_refine_in_training_moves_the_optimizer_onto_the_new_parameters():
    model = _model(2, 2).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    x, y = _images(16), torch.arange(16) % 10
    train.compute_loss(model, x, y, 0.0)[0].backward()
    optimizer.step()
    stem_state = optimizer.state[model.stem[0].weight]
    new = train.refine_in_training(model, optimizer, 4, 2)  # steps double, controls stay: all state carries over
    (group,) = optimizer.param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in new.parameters()]
    assert optimizer.state[new.stem[0].weight] is stem_state
    assert all(p in optimizer.state for p in new.parameters())
    newer = train.refine_in_training(new, optimizer, 4, 4)  # controls double: theirs start afresh
    fresh = {id(p) for block in newer.blocks for p in (block.weight, block.bias)}
    assert all((p in optimizer.state) != (id(p) in fresh) for p in newer.parameters())
    assert not any(p in optimizer.state for p in model.parameters())  # no state left for the old parameters
    losses = []
    for _ in range(20):  # training goes on with the same optimizer
        loss = train.compute_loss(newer, x, y, 0.0)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_levels_of_a_multilevel_schedule():
    config = train.default_config(n_steps=8, n_controls=2, epochs=8, refine_at=[2, 4, 6])
    assert train.levels(config) == [(0, 1, 1), (2, 2, 2), (4, 4, 2), (6, 8, 2)]
    assert train.levels(train.default_config(n_steps=8, epochs=8, refine_at=[2, 4, 6]))[-1] == (6, 8, 8)
    assert train.levels(train.default_config(n_steps=3, epochs=2)) == [(0, 3, 3)]
    for bad in ({"refine_at": [4, 2]}, {"refine_at": [0]}, {"refine_at": [8]}, {"n_steps": 6, "refine_at": [1, 2]}):
        with pytest.raises(SystemExit, match="refine-at"):
            train.levels(train.default_config(**{"n_steps": 8, "epochs": 8, **bad}))


def test_multilevel_training_run():
    """A run that refines twice: the n_steps of each epoch, a clock that runs on, the final grid's parameters."""
    sklearn = pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn")
    del sklearn
    config = train.default_config(widths=[4, 8], n_steps=4, n_controls=4, epochs=3, refine_at=[1, 2],
                                  progress=False, eval_every=2)
    result = train.run(config, log=lambda *_: None)
    assert result["steps_curve"] == [1, 2, 4] and result["test_epochs"] == [2, 3]
    assert len(result["loss_curve"]) == 3 and result["seconds_curve"] == sorted(result["seconds_curve"])
    fixed = train.run(train.default_config(widths=[4, 8], n_steps=4, epochs=1, progress=False),
                      log=lambda *_: None)
    assert result["params"] == fixed["params"]
