"""torch.func transforms over the block: grad-type transforms (grad, vjp, jacrev, jvp) run the reference under
backend='auto' and are refused with a clear error by backend='fused' (torch.library custom ops do not support
them); vmap runs the fused ops."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import contres
from conftest import assert_close_rel, make_inputs, random_like


def _block(device, backend, **kw):
    torch.manual_seed(0)
    return contres.ODEBlock(3, n_steps=3, n_controls=2, interp="linear", activation="tanh", backend=backend,
                            device=device, dtype=torch.float64, **kw)


def _loss(block):
    return lambda params, x: functional_call(block, params, (x,)).square().sum()


def test_func_grad_auto_equals_autograd(device, monkeypatch):
    block = _block(device, "auto")
    x = make_inputs(B=2, C=3, H=5, W=4, dtype=torch.float64, device=device, requires_grad=False)[0]
    params = {k: v.detach() for k, v in block.named_parameters()}
    monkeypatch.setattr(contres.functional, "_warned_fallback", set())  # the warning comes once per process
    with pytest.warns(RuntimeWarning, match="reference implementation under these transforms"):
        got = grad(_loss(block))(params, x)
    expected = torch.autograd.grad(block(x).square().sum(), (block.weight, block.bias))
    assert_close_rel(got["weight"], expected[0], 1e-12, "grad weight")
    assert_close_rel(got["bias"], expected[1], 1e-12, "grad bias")


@pytest.mark.filterwarnings("ignore:contres. torch.func")
def test_func_jacrev_wrt_input(device):
    block = _block(device, "auto")
    x = make_inputs(B=1, C=3, H=3, W=3, dtype=torch.float64, device=device, requires_grad=False)[0]
    jac = jacrev(lambda x: block(x))(x)
    ref = torch.autograd.functional.jacobian(lambda x: contres.reference.ode_block(
        x, block.weight.detach(), block.bias.detach(), T=1.0, n_steps=3, activation="tanh", interp="linear"), x)
    assert_close_rel(jac, ref, 1e-12, "jacobian")


def test_func_grad_fused_is_refused_clearly(device):
    block = _block(device, "fused")
    x = make_inputs(B=2, C=3, H=5, W=4, dtype=torch.float64, device=device, requires_grad=False)[0]
    params = {k: v.detach() for k, v in block.named_parameters()}
    with pytest.raises(RuntimeError, match=r"backend='fused' cannot run under torch\.func\.grad"):
        grad(_loss(block))(params, x)


def test_func_grad_continuous_gradient_is_refused_clearly(device):
    block = _block(device, "auto", gradient="continuous")
    x = make_inputs(B=2, C=3, H=5, W=4, dtype=torch.float64, device=device, requires_grad=False)[0]
    params = {k: v.detach() for k, v in block.named_parameters()}
    with pytest.raises(RuntimeError, match=r"gradient='continuous' cannot run under torch\.func"):
        grad(_loss(block))(params, x)


def test_vmap_runs_fused(device):
    """vmap over a stack of batches gives the per-batch results."""
    block = _block(device, "fused")
    xs = random_like(torch.empty(4, 2, 3, 5, 4, dtype=torch.float64, device=device))
    with torch.no_grad():
        got = vmap(block)(xs)
        for i in range(xs.shape[0]):
            assert_close_rel(got[i], block(xs[i]), 1e-12, f"vmap slice {i}")

