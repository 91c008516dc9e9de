"""torch.compile(fullgraph=True) of a small model holding a fused ODEBlock: no graph break (the op has fake
kernels and a registered autograd), and the same output and gradients as eager."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import contres
from conftest import assert_close_rel, random_like


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(device, layer, activation, interp, checkpoint, n_controls, method="euler", memory="states"):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        contres.ODEBlock(4, n_steps=4, n_controls=n_controls, T=1.0, layer=layer, activation=activation,
                         interp=interp, backend="fused", checkpoint=checkpoint, method=method, memory=memory),
        nn.Tanh(),
    ).to(device=device, dtype=torch.float64)
    with torch.no_grad():  # distinct controls, so a wrong interpolation would show
        model[1].weight.add_(0.05 * torch.randn_like(model[1].weight))
        model[1].bias.add_(0.05 * torch.randn_like(model[1].bias))
    return model


def _run(model, x, gy):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = model(x)
    y.backward(gy)
    return [y.detach(), x.grad] + [p.grad.clone() for p in model.parameters()]


CASES = [
    # compile backend, layer, activation, interp, checkpoint, n_controls[, method, memory]
    ("aot_eager", "single", "relu", "constant", False, 4),
    ("aot_eager", "double_sym", "tanh", "linear", True, 3),
    ("aot_eager", "single", "sigmoid", "linear", 2, 2),
    ("inductor", "single", "leaky_relu", "linear", False, 3),
    ("inductor", "double_sym", "relu", "constant", 3, 2),
    ("aot_eager", "double_sym", "tanh", "linear", False, 3, "leapfrog", "reversible"),
    ("inductor", "single", "relu", "linear", False, 2, "rk4", "states"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda v: "-".join(map(str, v)))
def test_compile_matches_eager(device, case):
    backend, layer, activation, interp, checkpoint, n_controls, *method_memory = case
    model = _model(device, layer, activation, interp, checkpoint, n_controls, *method_memory)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=device)
    gy = random_like(torch.empty(2, 4, 5, 6, dtype=torch.float64, device=device), seed=3)
    eager = _run(model, x, gy)
    compiled_model = torch.compile(model, backend=backend, fullgraph=True)
    got = _run(compiled_model, x, gy)
    names = ["output", "grad x"] + [n for n, _ in model.named_parameters()]
    for name, a, r in zip(names, got, eager):
        assert_close_rel(a, r, 1e-10, name)
    # and eager itself is right: the same model on the reference backend
    model[1].backend = "reference"
    ref = _run(model, x, gy)
    for name, a, r in zip(names, eager, ref):
        assert_close_rel(a, r, 1e-10, name)


def test_compile_functional_no_graph_break(device):
    """The functional API with a checkpoint stride under fullgraph compile, and a second call with another batch
    size (recompile or dynamic shapes: either must give the right numbers)."""
    def f(x, w, b):
        return contres.functional.ode_block(x, w, b, T=0.5, n_steps=5, layer="double_sym", activation="sigmoid",
                                            interp="linear", backend="fused", checkpoint=2).square().sum()

    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    g = torch.Generator().manual_seed(0)
    w = (0.2 * torch.randn(3, 3, 3, 3, 3, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    b = (0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    for B in (2, 3):
        x = torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
        got = torch.autograd.grad(cf(x, w, b), (x, w, b))
        want = torch.autograd.grad(contres.reference.ode_block(x, w, b, T=0.5, n_steps=5, layer="double_sym",
                                                               activation="sigmoid", interp="linear").square().sum(),
                                   (x, w, b))
        for a, r in zip(got, want):
            assert_close_rel(a, r, 1e-10)


def test_torch_export_save_load_dynamic_batch(device, tmp_path):
    """torch.export of a model holding an ODEBlock: the op stays one node, the batch dimension can be dynamic, and
    the saved program loads and runs (the fake implementation gives export its shapes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1),
                          contres.ODEBlock(6, n_steps=3, n_controls=2, interp="linear", activation="tanh",
                                           backend="fused"),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).to(device=device, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, device=device)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    ops = [n.target for n in program.graph.nodes if "contres" in str(n.target)]
    assert ops == [torch.ops.contres.ode_forward.default]
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for B in (2, 5):
        xb = torch.randn(B, 3, 7, 9, dtype=torch.float64, device=device)
        with torch.no_grad():
            assert_close_rel(loaded(xb), model(xb), 1e-12, f"exported output, batch {B}")


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "grad"])
def test_compile_picks_the_inference_memory_mode(device, context):
    """The memory mode the functional API picks when no gradient can flow is traced into the graph (and guarded):
    'none' under no_grad and inference_mode, the block's own under grad mode; the output is eager's."""
    model = _model(device, "double_sym", "tanh", "linear", False, 3, "leapfrog", "reversible")
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=device)
    compiled = torch.compile(model, backend=recording_backend, fullgraph=True)
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad}[context]
    with ctx():
        got, want = compiled(x), model(x)
    assert_close_rel(got, want, 1e-12, "output")
    [gm] = graphs
    op = torch.ops.contres.ode_forward
    calls = [n for n in gm.graph.nodes if n.target in (op, op.default)]
    assert len(calls) == 1
    schema = [a.name for a in op.default._schema.arguments]
    memory = dict(zip(schema, calls[0].args), **calls[0].kwargs)["memory"]
    assert memory == ("reversible" if context == "grad" else "none")
