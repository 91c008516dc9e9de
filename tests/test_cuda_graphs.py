"""CUDA graphs of whole op calls (set_cuda_paths(graphs="on")): replays give the plain path's results on new data,
instances are not overwritten while autograd holds their saved tensors, a caller's own capture is left alone, and
memory stays flat. GPU only."""
from __future__ import annotations

import pytest
import torch

import contres
from conftest import CUDA_OK, CUDA_SKIP_REASON, assert_close_rel, random_like

pytestmark = pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)


@pytest.fixture
def graphs_on():
    old = contres.cuda_paths()
    contres.set_cuda_paths(conv=old["conv"], graphs="on")
    torch.backends.cudnn.allow_tf32 = False
    yield
    contres.set_cuda_paths(**old)


def _grads(block, x, g):
    y = block(x)
    return (y.detach(),) + torch.autograd.grad(y, (x, block.weight, block.bias), g)


@pytest.mark.parametrize("method,layer,activation,checkpoint,memory", [
    ("euler", "single", "relu", False, "states"), ("euler", "double_sym", "tanh", 2, "states"),
    ("rk4", "single", "sigmoid", False, "states"), ("leapfrog", "single", "relu", False, "reversible")])
def test_replays_match_the_plain_path(graphs_on, method, layer, activation, checkpoint, memory):
    torch.manual_seed(0)
    block = contres.ODEBlock(16, n_steps=4, n_controls=2, layer=layer, activation=activation, backend="fused",
                             checkpoint=checkpoint, method=method, memory=memory, interp="linear").cuda()
    paths = []
    for it in range(5):  # 1: warm-up; 2: forward captured; 3: backward captured; 4, 5: both replayed
        x = torch.randn(4, 16, 12, 12, device="cuda", requires_grad=True)
        g = random_like(x, seed=it)
        got = _grads(block, x, g)
        paths.append(dict(contres.ops.last_paths()))
        contres.set_cuda_paths(graphs="off")
        want = _grads(block, x, g)
        contres.set_cuda_paths(graphs="on")
        for name, a, r in zip(("output", "x", "weight", "bias"), got, want):
            assert_close_rel(a, r, 1e-6, f"iteration {it} {name}")
    assert paths[0] == {"forward": "cuda:aten", "backward": "cuda:aten"}
    assert all(p["forward"].endswith("+graph") for p in paths[1:]), paths
    assert all(p["backward"].endswith("+graph") for p in paths[2:]), paths


def test_held_outputs_are_not_overwritten(graphs_on):
    """Two forwards before either backward (two blocks of one shape, or a kept graph): the second replay must not
    overwrite the first one's saved tensors."""
    torch.manual_seed(1)
    block = contres.ODEBlock(8, n_steps=3, backend="fused").cuda()
    x0 = torch.randn(2, 8, 10, 10, device="cuda")
    for _ in range(3):  # warm the forward and backward graphs up
        block(x0.clone().requires_grad_()).sum().backward()
    xs = [torch.randn(2, 8, 10, 10, device="cuda", requires_grad=True) for _ in range(3)]
    ys = [block(x) for x in xs]  # three replays in flight: three instances (or plain runs)
    for x, y in zip(xs, ys):
        gx = torch.autograd.grad(y, x, torch.ones_like(y))[0]
        contres.set_cuda_paths(graphs="off")
        y_ref = block(x)
        gx_ref = torch.autograd.grad(y_ref, x, torch.ones_like(y_ref))[0]
        contres.set_cuda_paths(graphs="on")
        assert_close_rel(y, y_ref, 1e-6, "output")
        assert_close_rel(gx, gx_ref, 1e-6, "grad x")


def test_a_callers_capture_runs_the_plain_path(graphs_on):
    """Inside the caller's own capture (make_graphed_callables) contres does not capture or replay its own."""
    torch.manual_seed(2)
    block = contres.ODEBlock(16, n_steps=4, backend="fused").cuda()
    sample = torch.randn(2, 16, 12, 12, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(block, (sample,))
    x = random_like(sample, 5).requires_grad_()
    y = graphed(x)
    gx = torch.autograd.grad(y, x, torch.ones_like(y))[0]
    contres.set_cuda_paths(graphs="off")
    y_ref = block(x)
    assert_close_rel(y, y_ref, 1e-6, "graphed output")
    assert_close_rel(gx, torch.autograd.grad(y_ref, x, torch.ones_like(y_ref))[0], 1e-6, "graphed grad")


def test_memory_flat_over_200_iterations(graphs_on):
    torch.manual_seed(3)
    block = contres.ODEBlock(16, n_steps=4, backend="fused").cuda()
    opt = torch.optim.SGD(block.parameters(), lr=1e-3)
    allocated = []
    for it in range(200):
        x = torch.randn(8, 16, 16, 16, device="cuda")
        opt.zero_grad()
        block(x).square().mean().backward()
        opt.step()
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
    assert max(allocated[100:]) <= max(allocated[20:100]), (max(allocated[20:100]), max(allocated[100:]))
