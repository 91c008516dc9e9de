"""ContinuousResNet, ODEBlock.smoothness / refine, and the continuous (Optimize-Discretize) gradient."""
from __future__ import annotations

import pytest
import torch

import contres
from contres import reference
from contres.models import ContinuousResNet

from conftest import assert_close_rel, make_inputs, random_like, rel_err

BACKENDS = ["fused", "reference"]


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Different controls at every time (the default initialisation makes them all equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)


def _model_grads(backend: str, **kwargs):
    torch.manual_seed(0)
    model = ContinuousResNet(1, 10, widths=(4, 6), n_steps=3, n_controls=2, backend=backend, **kwargs).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(5) % 10
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer,interp", [("single", "constant"), ("double_sym", "linear")])
def test_model_shapes_and_gradients(backend, layer, interp):
    out, grads = _model_grads(backend, layer=layer, interp=interp)
    assert out.shape == (5, 10)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.0.weight"].abs().sum() > 0 and grads["stem.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("layer,interp", [("single", "constant"), ("double_sym", "linear")])
def test_model_fused_equals_reference(layer, interp):
    out_f, grads_f = _model_grads("fused", layer=layer, interp=interp)
    out_r, grads_r = _model_grads("reference", layer=layer, interp=interp)
    assert_close_rel(out_f, out_r, 1e-10, "logits")
    for name in grads_r:
        assert_close_rel(grads_f[name], grads_r[name], 1e-10, name)


def test_model_block_norm_tv_fused_equals_reference():
    out_f, grads_f = _model_grads("fused", layer="double_sym", interp="linear", block_norm="tv")
    out_r, grads_r = _model_grads("reference", layer="double_sym", interp="linear", block_norm="tv")
    assert_close_rel(out_f, out_r, 1e-10, "logits")
    for name in grads_r:
        assert_close_rel(grads_f[name], grads_r[name], 1e-10, name)
    assert all(block.norm == "tv" for block in ContinuousResNet(1, 10, block_norm="tv").blocks)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_model_three_stages_rgb(norm):
    model = ContinuousResNet(3, 7, widths=(4, 8, 8), n_steps=1, norm=norm)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert len(model.blocks) == 3 and len(model.connections) == 2


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        ContinuousResNet(1, 10, norm="layer")
    with pytest.raises(ValueError, match="widths"):
        ContinuousResNet(1, 10, widths=())
    with pytest.raises(ValueError, match="gradient"):
        contres.ODEBlock(4, gradient="adjoint")


# ---------------------------------------------------------------------------------------------- smoothness


@pytest.mark.parametrize("interp,spacing", [("constant", 2.0 / 3), ("linear", 2.0 / 2)])
def test_smoothness_matches_direct_sum(interp, spacing):
    block = contres.ODEBlock(3, n_steps=4, n_controls=3, T=2.0, interp=interp, dtype=torch.float64)
    _randomize(block)
    w, b = block.weight.detach(), block.bias.detach()
    direct = sum(((w[j + 1] - w[j]) ** 2).sum() + ((b[j + 1] - b[j]) ** 2).sum() for j in range(2)) / spacing
    assert block.smoothness().item() == pytest.approx(direct.item(), rel=1e-12)
    block.smoothness().backward()
    assert block.weight.grad.abs().sum() > 0


def test_smoothness_zero_for_one_control_and_at_initialisation():
    assert contres.ODEBlock(3, n_steps=4, n_controls=1).smoothness().item() == 0.0
    assert contres.ODEBlock(3, n_steps=4, n_controls=4).smoothness().item() == 0.0  # equal controls at init
    model = ContinuousResNet(1, 10, widths=(4, 6), n_steps=2)
    _randomize(model)
    assert model.smoothness().item() == pytest.approx(sum(b.smoothness().item() for b in model.blocks))


# ---------------------------------------------------------------------------------------------- refine


def _block(n_steps, n_controls, interp, **kwargs):
    block = contres.ODEBlock(3, n_steps=n_steps, n_controls=n_controls, T=1.5, interp=interp, activation="tanh",
                             dtype=torch.float64, **kwargs)
    _randomize(block)
    return block


def _kernels(block, n_steps):
    return reference.interpolate_controls(block.weight.detach(), block.bias.detach(), n_steps, block.interp)


@pytest.mark.parametrize("interp", ["constant", "linear"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_refine_same_controls_keeps_the_function(interp, backend):
    block = _block(6, 3, interp, backend=backend, layer="double_sym")
    same = block.refine()
    assert same is not block and same.weight is not block.weight
    assert torch.equal(same.weight, block.weight) and torch.equal(same.bias, block.bias)
    x = make_inputs(C=3, dtype=torch.float64, requires_grad=False)[0]
    assert torch.equal(same(x), block(x))
    finer = block.refine(n_steps=12)  # more state layers, the same controls
    assert (finer.n_steps, finer.n_controls) == (12, 3)
    assert torch.equal(finer.weight, block.weight)
    for name in ("T", "layer", "activation", "interp", "backend", "kernel_size", "checkpoint", "gradient"):
        assert getattr(finer, name) == getattr(block, name)


@pytest.mark.parametrize("interp,old,new", [("constant", 2, 6), ("constant", 3, 3), ("linear", 3, 5),
                                            ("linear", 2, 7), ("linear", 1, 4), ("constant", 1, 3)])
def test_refine_more_controls_samples_the_same_function(interp, old, new):
    block = _block(4, old, interp)
    finer = block.refine(n_controls=new)
    assert finer.n_controls == new and finer.n_steps == 4
    for n_steps in (1, 3, 4, 6, 12):  # the per-step kernels: the function of time seen at every step
        K_old, b_old = _kernels(block, n_steps)
        K_new, b_new = _kernels(finer, n_steps)
        assert_close_rel(K_new, K_old, 1e-14, f"kernels at n_steps={n_steps}")
        assert_close_rel(b_new, b_old, 1e-14, f"biases at n_steps={n_steps}")
    x = make_inputs(C=3, dtype=torch.float64, requires_grad=False)[0]
    assert_close_rel(finer(x), block(x), 1e-12, "output")


@pytest.mark.parametrize("interp,old,new,picked", [("constant", 4, 2, [0, 2]), ("linear", 5, 3, [0, 2, 4]),
                                                   ("linear", 3, 1, [0])])
def test_refine_coarser_samples_the_controls(interp, old, new, picked):
    block = _block(4, old, interp)
    coarse = block.refine(n_controls=new)
    assert torch.equal(coarse.weight, block.weight[picked])
    assert torch.equal(coarse.bias, block.bias[picked])


def test_refine_linear_midpoints():
    block = _block(4, 2, "linear")
    finer = block.refine(n_controls=3)
    assert_close_rel(finer.weight[1], (block.weight[0] + block.weight[1]) / 2, 1e-15, "midpoint")


def test_model_refine():
    model = ContinuousResNet(1, 10, widths=(4, 6), n_steps=2, n_controls=1, interp="linear").double().eval()
    _randomize(model)
    finer = model.refine(n_steps=4, n_controls=3)
    assert [(b.n_steps, b.n_controls) for b in finer.blocks] == [(4, 3), (4, 3)]
    assert [(b.n_steps, b.n_controls) for b in model.blocks] == [(2, 1), (2, 1)]  # the original is untouched
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    # one control: a constant function of time, so only the Euler discretisation changes (a little)
    assert rel_err(finer(x), model(x)) < 0.2
    assert torch.equal(model.refine()(x), model(x))


# ---------------------------------------------------------------------------------------------- gradients


def _grads(x, w, b, grad_out, **kwargs):
    x, w, b = (t.detach().requires_grad_(True) for t in (x, w, b))
    y = contres.functional.ode_block(x, w, b, **kwargs)
    return (y, *torch.autograd.grad(y, (x, w, b), grad_out))


@pytest.mark.parametrize("backend", BACKENDS)
def test_discrete_gradient_is_autograd(backend):
    x, w, b = make_inputs(C=3, M=2)
    g = random_like(x)
    kwargs = dict(n_steps=5, layer="double_sym", activation="tanh", interp="linear")
    y_ref = reference.ode_block(x, w, b, T=1.0, **kwargs)
    ref = torch.autograd.grad(y_ref, (x, w, b), g)
    got = _grads(x, w, b, g, backend=backend, gradient="discrete", **kwargs)
    for a, r, what in zip(got[1:], ref, ("x", "weight", "bias")):
        assert_close_rel(a, r, 1e-10, what)


@pytest.mark.parametrize("layer,interp", [("single", "constant"), ("double_sym", "linear"), ("single", "linear")])
def test_continuous_gradient_differs_by_order_h(layer, interp):
    x, w, b = make_inputs(C=3, M=2, scale=0.5)
    g = random_like(x)
    errors = []
    for n_steps in (8, 16, 32):
        kwargs = dict(n_steps=n_steps, layer=layer, activation="tanh", interp=interp)
        discrete = _grads(x, w, b, g, gradient="discrete", **kwargs)
        continuous = _grads(x, w, b, g, gradient="continuous", **kwargs)
        assert_close_rel(continuous[0], discrete[0], 1e-12, "the forward does not depend on the gradient")
        errors.append([rel_err(c, d) for c, d in zip(continuous[1:], discrete[1:])])
    for coarse, fine in zip(errors, errors[1:]):
        for e_coarse, e_fine in zip(coarse, fine):
            assert 1e-4 < e_fine < e_coarse
            assert 1.6 < e_coarse / e_fine < 2.5, errors  # first order: halving h halves the difference


def test_continuous_gradient_through_block():
    block = contres.ODEBlock(3, n_steps=4, n_controls=4, activation="tanh", dtype=torch.float64,
                             gradient="continuous")
    _randomize(block)
    assert "gradient='continuous'" in repr(block)
    x = make_inputs(C=3)[0]
    block(x).square().sum().backward()
    # every control drives one step and so gets a gradient (the end-of-step rule keeps the owner of the step)
    assert (block.weight.grad.flatten(1).abs().sum(1) > 0).all()
    assert x.grad is not None and torch.isfinite(x.grad).all()
