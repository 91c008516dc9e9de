"""Right-hand sides as chains of stages (contres.chain, docs/math.md section 8): the fused op against the reference
(plain PyTorch: F.conv2d over torch.cat([t, z]), F.group_norm, F.conv_transpose2d) for every stage, norm, method,
memory mode and interpolation, forward and every parameter's gradient; the ATen composition of the run passes
(the CUDA path) against the CPU kernels; the widths and parameter names of the Python plan against the op's."""
from __future__ import annotations

import math

import pytest
import torch

import contres
from contres import chain, reference
from conftest import DEVICE_PARAMS, assert_close_rel, random_like, tol_for

# (name, layer, norm, options): options are ODEBlock keywords beyond the layer and norm.
CHAINS = [
    ("tuple_single", ("conv", "act"), "none", {}),
    ("conv_bias_act", ("conv", "bias", "act"), "none", {}),
    ("conv_t_bias_neg", ("conv", "act", "conv_t", "bias", "neg"), "none", {}),
    ("seed_double_sym_tv", ("conv", "norm", "bias", "act", "conv_t", "bias", "neg"), "tv", {"norm_eps": 1e-4}),
    ("seed_double_group", ("conv", "norm", "bias", "act", "conv", "norm", "bias", "act"), "group",
     {"norm_groups": 2}),
    ("seed_preact_instance", ("act", "conv", "norm", "bias", "act", "conv", "norm", "bias"), "instance", {}),
    ("torchdiffeq", ("norm", "act", "conv", "norm", "act", "conv", "norm"), "group",
     {"norm_affine": True, "time_channel": True, "norm_groups": 2}),
    ("neg_conv", ("neg", "conv"), "none", {}),
    ("conv_conv", ("conv", "conv"), "none", {}),
    ("two_acts", ("conv", "act", "act"), "none", {}),
    ("two_norms", ("conv", "norm", "norm", "act"), "group", {"norm_groups": 2, "norm_affine": True}),
    ("act_then_bias", ("conv", "act", "bias"), "none", {}),
    ("tv_affine_time", ("conv", "norm", "act"), "tv", {"norm_affine": True, "time_channel": True}),
    ("single_group_preset", "single", "group", {"norm_groups": 1}),
    ("double_sym_hidden_time", "double_sym", "none", {"time_channel": True}),
]
CHAIN_IDS = [c[0] for c in CHAINS]
BY_NAME = {c[0]: c for c in CHAINS}


def chain_block(layer, norm, options, *, C=4, hidden=None, N=3, M=2, k=3, activation="relu", interp="linear",
                method="euler", memory="states", checkpoint=False, dtype=torch.float64, seed=0, scale=0.4):
    """An ODEBlock of the chain with random parameters of the given scale (norm scales about 1)."""
    block = contres.ODEBlock(C, N, M, layer=layer, norm=norm, activation=activation, interp=interp, kernel_size=k,
                             method=method, memory=memory, checkpoint=checkpoint, hidden_channels=hidden,
                             dtype=dtype, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for spec in block.plan.params:
            p = getattr(block, spec.name)
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if spec.kind == "kernel":
                r = r * (scale * 3.0 / math.sqrt(spec.fan_in))
            elif spec.kind == "norm_weight":
                r = 1 + 0.2 * r
            else:
                r = r * scale
            p.copy_(r)
    return block


def run_both(block, x, gy):
    """Output and gradients (x, then every parameter) of the fused and the reference backend."""
    out = {}
    for backend in ("reference", "fused"):
        block.backend = backend
        xi = x.detach().clone().requires_grad_()
        y = block(xi)
        params = [getattr(block, s.name) for s in block.plan.params]
        grads = torch.autograd.grad(y, [xi, *params], gy)
        out[backend] = (y.detach(), grads)
    return out


def assert_matches_reference(block, x, dtype, what=""):
    gy = random_like(x, seed=7)
    res = run_both(block, x, gy)
    (y_ref, g_ref), (y, g) = res["reference"], res["fused"]
    assert (y_ref - x).abs().max() > 1e-3 * x.abs().max(), "the block must move the state"
    assert_close_rel(y, y_ref, tol_for(dtype), f"{what} output")
    names = ["x"] + [s.name for s in block.plan.params]
    floor = max(gr.abs().max().item() for gr in g_ref)  # a gradient zero in exact arithmetic: on the others' scale
    for name, gf, gr in zip(names, g, g_ref):
        assert gf.shape == gr.shape and gf.dtype == gr.dtype, name
        assert_close_rel(gf, gr, tol_for(dtype, grad=True), f"{what} grad {name}", floor=floor)


def inputs(C=4, B=2, H=5, W=6, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------- every chain, every method
@pytest.mark.parametrize("method", ["euler", "rk4", "leapfrog"])
@pytest.mark.parametrize("name", CHAIN_IDS)
def test_chain_matches_reference(name, method):
    _, layer, norm, options = BY_NAME[name]
    hidden = 6 if name in ("seed_double_sym_tv", "seed_double_group", "double_sym_hidden_time", "conv_conv") else None
    block = chain_block(layer, norm, options, hidden=hidden, method=method, seed=CHAIN_IDS.index(name))
    assert_matches_reference(block, inputs(), torch.float64, f"{name}/{method}")


@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
def test_every_activation_in_a_chain(activation):
    """Each activation in a run the backward recomputes (Pre, after a norm) and in one it reads kept (Value or
    Mask): ("conv", "bias", "act", "conv", "norm", "act")."""
    block = chain_block(("conv", "bias", "act", "conv", "norm", "act"), "instance", {"norm_affine": True},
                        activation=activation, hidden=5)
    assert_matches_reference(block, inputs(), torch.float64, activation)


@pytest.mark.parametrize("interp", ["constant", "linear"])
@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "seed_preact_instance"])
def test_interpolations(name, interp):
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, N=5, M=3, interp=interp, method="rk4")
    assert_matches_reference(block, inputs(), torch.float64, f"{name}/{interp}")


@pytest.mark.parametrize("checkpoint", [True, 2], ids=["ckpt=True", "ckpt=2"])
@pytest.mark.parametrize("method", ["euler", "rk4", "leapfrog"])
@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "seed_preact_instance", "conv_bias_act"])
def test_checkpointing(name, method, checkpoint):
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, N=5, method=method, checkpoint=checkpoint)
    assert_matches_reference(block, inputs(), torch.float64, f"{name}/{method}/{checkpoint}")


@pytest.mark.parametrize("name", CHAIN_IDS)
def test_reversible_leapfrog(name):
    """memory='reversible' walks back recomputing u_{k-1} = 2 u_k - u_{k+1} + h^2 f(u_k): every chain allows it
    (it needs f alone)."""
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, N=4, method="leapfrog", memory="reversible")
    assert_matches_reference(block, inputs(), torch.float64, name)


@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "seed_double_group", "seed_preact_instance",
                                  "two_norms", "conv_bias_act"])
def test_float32(name):
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, dtype=torch.float32, hidden=8)
    assert_matches_reference(block, inputs(dtype=torch.float32), torch.float32, name)


@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_group", "conv_bias_act"])
def test_channels_not_a_multiple_of_the_vector_width(name):
    """C = 7 and 12 (prime, and one that does not fill a vector of 8): the kernels' partial last vector, the
    Mask's bytes across pixels and the norms' per-channel rows."""
    _, layer, norm, options = BY_NAME[name]
    for C in (7, 12):
        opts = dict(options)
        if "norm_groups" in opts:
            opts["norm_groups"] = 1 if C == 7 else 2
        block = chain_block(layer, norm, opts, C=C, hidden=C + 2 if name == "seed_double_group" else None)
        assert_matches_reference(block, inputs(C=C, H=3, W=7), torch.float64, f"{name}/C{C}")


@pytest.mark.parametrize("name", ["torchdiffeq", "seed_preact_instance", "conv_bias_act"])
def test_past_one_piece_of_work(name):
    """A sample larger than one block (16384 values): the run passes split it into items, a group norm's
    statistics and backward sums come from sweeps over them before the pass, and with several threads the items
    run in parallel; the sums over items stay exact and ordered. (Smaller samples, every other test here, are one
    block each, their sums formed inline.)"""
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, {**options, **({"norm_groups": 4} if "norm_groups" in options else {})},
                        C=12, N=2, M=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert_matches_reference(block, inputs(C=12, B=3, H=41, W=40), torch.float64, name)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- every device
@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "seed_preact_instance", "conv_bias_act",
                                  "two_norms", "double_sym_hidden_time"])
@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_chain_on_device(device, name, method):
    """The fused chain on each device against the reference there (CUDA: cuDNN's convolutions and the ATen run
    passes), float64, with checkpointing on rk4."""
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, hidden=6, method=method, checkpoint=method == "rk4").to(device)
    assert_matches_reference(block, inputs().to(device), torch.float64, f"{device}/{name}/{method}")


# ------------------------------------------------------------------------------ the ATen run passes (CUDA's path)
@pytest.fixture
def aten_run_passes():
    contres._ext._C._set_run_passes("aten")
    yield
    contres._ext._C._set_run_passes("auto")


@pytest.mark.parametrize("name", CHAIN_IDS)
def test_aten_run_passes_match_reference(aten_run_passes, name):
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, hidden=6 if "double" in name else None, method="rk4")
    assert_matches_reference(block, inputs(), torch.float64, f"aten/{name}")


def test_aten_run_passes_equal_cpu_kernels_in_float32():
    _, layer, norm, options = BY_NAME["torchdiffeq"]
    block = chain_block(layer, norm, options, dtype=torch.float32, C=8, hidden=8)
    block.backend = "fused"
    x = inputs(C=8, dtype=torch.float32).requires_grad_()
    outs = []
    for passes in ("auto", "aten"):
        contres._ext._C._set_run_passes(passes)
        try:
            y = block(x)
            outs.append([y, *torch.autograd.grad(y, [x, *block.parameters()], random_like(y))])
        finally:
            contres._ext._C._set_run_passes("auto")
    for a, b in zip(*outs):
        assert_close_rel(a, b, 1e-5, "cpu kernels vs aten")


# ---------------------------------------------------------------------------------------- the plan, both sides
@pytest.mark.parametrize("name", CHAIN_IDS)
def test_python_plan_is_the_ops_plan(name):
    """The op accepts exactly the parameters the Python plan makes, in its order, and refuses each one with one
    row's shape off by one."""
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, hidden=6)
    x = inputs()
    stages = chain.stages_of(layer, norm)
    op_layer = layer if isinstance(layer, str) else chain.layer_string(stages)
    params = [getattr(block, s.name).detach() for s in block.plan.params]
    kw = dict(norm_eps=options.get("norm_eps"), norm_groups=options.get("norm_groups") or 0,
              norm_affine=options.get("norm_affine", False), time_channel=options.get("time_channel", False))
    contres.ops.ode_forward(x, params[0], params[1], 0.25, op_layer, "relu", 0, norm, "euler", "states", "linear", 3,
                            None, params[2:], **kw)
    for i, spec in enumerate(block.plan.params):
        bad = list(params)
        shape = list(bad[i].shape)
        shape[-1] += 1
        bad[i] = torch.zeros(shape, dtype=bad[i].dtype)
        with pytest.raises(ValueError, match=spec.name if i >= 2 else r"weight|bias"):
            contres.ops.ode_forward(x, bad[0], bad[1], 0.25, op_layer, "relu", 0, norm, "euler", "states",
                                    "linear", 3, None, bad[2:], **kw)


def test_presets_keep_their_parameters_and_results():
    """'single' and 'double_sym' are chains too; their state dicts hold weight and bias alone, and the tuple
    spelling of a preset gives the same block."""
    for preset, stages in chain.PRESETS.items():
        torch.manual_seed(0)
        a = contres.ODEBlock(3, 2, layer=preset, dtype=torch.float64)
        torch.manual_seed(0)
        b = contres.ODEBlock(3, 2, layer=stages, dtype=torch.float64)
        assert list(a.state_dict()) == ["weight", "bias"] == list(b.state_dict())
        x = inputs(C=3)
        assert torch.equal(a(x), b(x))


def test_parameter_names_and_shapes():
    block = contres.ODEBlock(4, 2, 3, layer=("conv", "norm", "bias", "act", "conv", "norm", "bias", "act"),
                             norm="group", norm_groups=2, norm_affine=True, hidden_channels=6, time_channel=True)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {"weight": (3, 6, 5, 3, 3), "bias": (3, 6), "norm_weight": (3, 6), "norm_bias": (3, 6),
                      "shift": (3, 6), "weight2": (3, 4, 7, 3, 3), "bias2": (3, 4), "norm_weight2": (3, 4),
                      "norm_bias2": (3, 4), "shift2": (3, 4)}
    assert torch.equal(block.norm_weight, torch.ones(3, 6)) and torch.equal(block.shift, torch.zeros(3, 6))


def test_refine_and_smoothness_cover_every_parameter():
    _, layer, norm, options = BY_NAME["torchdiffeq"]
    block = chain_block(layer, norm, options, N=4, M=2, interp="linear")
    fine = block.refine(n_controls=3)
    x = inputs()
    for backend in ("reference", "fused"):
        block.backend = fine.backend = backend
        assert_close_rel(fine(x), block(x), 1e-12, "refined on nested nodes")
    expected = sum((p[1:] - p[:-1]).square().sum() for p in block.parameters()) / block.control_spacing
    assert torch.allclose(block.smoothness(), expected)


# ------------------------------------------------------------------------------ gradcheck, opcheck, compile, export
SMOOTH = [("torchdiffeq_softplus", ("norm", "act", "conv", "norm", "act", "conv", "norm"), "group",
           {"norm_affine": True, "time_channel": True, "norm_groups": 2}, "softplus"),
          ("seed_double_sym_tanh", ("conv", "norm", "bias", "act", "conv_t", "bias", "neg"), "tv",
           {"norm_eps": 1e-4}, "tanh"),
          ("preact_sigmoid", ("act", "conv", "norm", "bias", "act", "conv", "norm", "bias"), "instance",
           {"norm_affine": True}, "sigmoid")]


@pytest.mark.parametrize("name,layer,norm,options,activation", SMOOTH, ids=[s[0] for s in SMOOTH])
@pytest.mark.parametrize("method", ["euler", "rk4", "leapfrog"])
def test_gradcheck_float64(name, layer, norm, options, activation, method):
    """The fused backward is the exact adjoint: finite differences of the fused forward agree with it, for every
    input and parameter (smooth activations, so no kink sits between the two evaluations)."""
    block = chain_block(layer, norm, options, C=2, hidden=4, N=2, M=2, activation=activation, method=method)
    block.backend = "fused"
    names = [s.name for s in block.plan.params]
    params = [getattr(block, n).detach().clone().requires_grad_() for n in names]
    x = inputs(C=2, B=1, H=3, W=3).requires_grad_()

    def f(x, *ps):
        return contres.functional.ode_block(
            x, ps[0], ps[1], T=1.0, n_steps=2, layer=layer, norm=norm, activation=activation, interp="linear",
            method=method, backend="fused", params=dict(zip(names[2:], ps[2:])), **options)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "seed_preact_instance", "conv_bias_act",
                                  "two_norms"])
def test_opcheck(name):
    """torch.library.opcheck of both ops with a chain's params: schema, fake (Meta) kernels, autograd
    registration, and the aux list's layout."""
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, N=2)
    stages = chain.stages_of(layer, norm)
    op_layer = layer if isinstance(layer, str) else chain.layer_string(stages)
    ps = [getattr(block, s.name).detach().requires_grad_() for s in block.plan.params]
    x = inputs().requires_grad_()
    kw = (options.get("norm_eps"), options.get("norm_groups") or 0, options.get("norm_affine", False),
          options.get("time_channel", False))
    args = (x, ps[0], ps[1], 0.5, op_layer, "relu", 0, norm, "rk4", "states", "linear", 2, None, ps[2:], *kw)
    torch.library.opcheck(torch.ops.contres.ode_forward.default, args)
    with torch.no_grad():
        _, states, aux = torch.ops.contres.ode_forward(*args)
    gy = random_like(x)
    bargs = (gy, x.detach(), ps[0].detach(), ps[1].detach(), states, aux, 0.5, op_layer, "relu", 0, norm, "rk4",
             "states", "linear", 2, None, [p.detach() for p in ps[2:]], *kw)
    torch.library.opcheck(torch.ops.contres.ode_backward.default, bargs)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv"])
def test_compile_matches_eager(name, backend):
    torch._dynamo.reset()
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, N=3, method="rk4")
    block.backend = "fused"
    model = torch.nn.Sequential(block, torch.nn.Tanh())
    x = inputs()
    gy = random_like(x, seed=5)

    def run(m):
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(gy)
        return [y.detach(), xi.grad] + [p.grad.clone() for p in m.parameters()]
    eager = run(model)
    compiled = run(torch.compile(model, backend=backend, fullgraph=True))
    for a, b in zip(compiled, eager):
        assert_close_rel(a, b, 1e-12, "compiled")
    torch._dynamo.reset()


def test_export_with_a_dynamic_batch():
    _, layer, norm, options = BY_NAME["torchdiffeq"]
    block = chain_block(layer, norm, options, N=3)
    block.backend = "fused"
    x = inputs(B=3)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(block, (x,), dynamic_shapes=({0: batch},))
    for B in (3, 5):
        xb = inputs(B=B, seed=B)
        assert_close_rel(program.module()(xb), block(xb), 1e-13, f"exported, batch {B}")


# ------------------------------------------------------------------------------------------ inference, memory
def test_inference_keeps_nothing():
    """Under no_grad a chain's op runs with memory='none': no states, no aux, the training forward's output."""
    from contres import ops
    _, layer, norm, options = BY_NAME["torchdiffeq"]
    block = chain_block(layer, norm, options, N=4, method="rk4")
    block.backend = "fused"
    x = inputs()
    calls = []
    real = ops.ode_forward

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args[9], result))
        return result
    ops.ode_forward = spy
    try:
        with torch.no_grad():
            y = block(x)
    finally:
        ops.ode_forward = real
    [(memory, (_, states, aux))] = calls
    assert memory == "none" and states.numel() == 0 and aux == []
    assert_close_rel(y, block(x.clone().requires_grad_()), 1e-13, "inference output")


def _saved_bytes(block, x):
    from contres.bench.memory import saved_bytes
    return saved_bytes(lambda: block(x), (x, *block.parameters()))[0]


@pytest.mark.parametrize("name", CHAIN_IDS)
def test_keeps_no_more_than_eager_autograd(name):
    """The bytes the fused forward saves for its backward never exceed plain autograd's (the reference);
    torchdiffeq's ODE function keeps at most 0.6x of it."""
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, C=8, hidden=8, N=4, dtype=torch.float32)
    x = inputs(C=8, B=4, H=8, W=8, dtype=torch.float32).requires_grad_()
    sizes = {}
    for backend in ("reference", "fused"):
        block.backend = backend
        sizes[backend] = _saved_bytes(block, x)
    assert sizes["fused"] <= sizes["reference"], sizes
    if name == "torchdiffeq":
        assert sizes["fused"] <= 0.6 * sizes["reference"], sizes


# ------------------------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "seed_preact_instance", "conv_bias_act"])
def test_mixed_precision_no_worse_than_per_op_autocast(name):
    """A float32 state under bf16 autocast: against float32, the fused block's relative L2 errors (output and
    every gradient, summed) are within 1.5x of plain per-op autocast's (the reference under autocast), averaged
    over two draws (relu kinks flip differently in the two)."""
    _, layer, norm, options = BY_NAME[name]
    errs = {"fused": 0.0, "reference": 0.0}
    for seed in (21, 22):
        block = chain_block(layer, norm, options, C=16, hidden=16, N=3, dtype=torch.float32, seed=seed)
        x = inputs(C=16, B=2, H=6, W=6, dtype=torch.float32, seed=seed).requires_grad_()
        gy = random_like(x, seed=seed)

        def run(backend, amp):
            block.backend = backend
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = block(x)
            return [y] + list(torch.autograd.grad(y, [x, *block.parameters()], gy))
        ref32 = run("reference", False)
        for backend in errs:
            got = run(backend, True)
            assert got[0].dtype == torch.float32
            errs[backend] += sum(((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)).item()
                                 for a, r in zip(got, ref32))
    assert errs["fused"] <= 1.5 * errs["reference"], errs


# --------------------------------------------------------------------------------------------------- bad input
BAD_CHAINS = {
    "unknown stage": (dict(layer=("conv", "relu")), r"layer: stage 1 is 'relu'"),
    "conv_t before any conv": (dict(layer=("conv_t", "conv")), r"conv_t with no conv before it"),
    "norm stage with norm none": (dict(layer=("conv", "norm", "act")), r"norm stage .* norm='none'"),
    "groups not dividing": (dict(layer=("conv", "norm"), norm="group", norm_groups=3), r"norm_groups=3 .* divide"),
    "default groups not dividing": (dict(layer=("conv", "norm"), norm="group", channels=48, hidden_channels=40),
                                    r"norm_groups=32 \(the default"),
    "not ending at channels": (dict(layer=("conv", "act", "conv", "conv_t"), hidden_channels=6),
                               r"ends at 6 channels"),
    "empty chain": (dict(layer=()), r"empty chain"),
    "no conv": (dict(layer=("act", "norm"), norm="tv"), r"no 'conv' stage"),
    "norm_eps 0": (dict(layer="single", norm="tv", norm_eps=0.0), r"norm_eps must be a positive"),
    "norm_eps negative": (dict(layer="single", norm="group", norm_eps=-1e-5), r"norm_eps must be a positive"),
    "norm_groups with tv": (dict(layer="single", norm="tv", norm_groups=2), r"norm_groups applies to norm='group'"),
    "norm_affine without a norm": (dict(layer="single", norm_affine=True), r"norm_affine needs a norm"),
    "unknown norm": (dict(layer="single", norm="batch"), r"norm must be one of"),
}


@pytest.mark.parametrize("case", list(BAD_CHAINS))
def test_bad_chain_is_refused_before_any_computation(case):
    kwargs, match = BAD_CHAINS[case]
    kwargs = dict(kwargs)
    channels = kwargs.pop("channels", 4)
    with pytest.raises(ValueError, match=match):
        contres.ODEBlock(channels, 2, **kwargs)


def test_op_refuses_the_same_chains():
    """The op checks the chain itself too (a caller of torch.ops.contres.ode_forward gets the same refusal)."""
    x = inputs()
    w, b = torch.zeros(1, 4, 4, 3, 3, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)
    for layer, norm, match in [("conv,relu", "none", r"unknown stage 'relu'"), ("conv_t,conv", "none", r"conv_t"),
                               ("conv,norm,act", "none", r"norm stage"), ("act,neg", "none", r"no conv stage"),
                               ("", "none", r"empty chain")]:
        with pytest.raises(ValueError, match=match):
            torch.ops.contres.ode_forward(x, w, b, 0.5, layer, "relu", 0, norm)
    with pytest.raises(ValueError, match=r"norm_eps must be"):
        torch.ops.contres.ode_forward(x, w, b, 0.5, "conv,norm", "relu", 0, "tv", norm_eps=-1.0)
    with pytest.raises(ValueError, match=r"params besides weight and bias"):
        torch.ops.contres.ode_forward(x, w, b, 0.5, "conv,bias", "relu", 0, "none", params=[])


def test_functional_params_are_checked_by_name():
    _, layer, norm, options = BY_NAME["torchdiffeq"]
    block = chain_block(layer, norm, options)
    x = inputs()
    params = block._chain_params()
    kw = dict(T=1.0, n_steps=3, layer=layer, norm=norm, interp="linear", **options)
    w, b = block.weight, block.bias
    with pytest.raises(ValueError, match=r"missing \['norm_weight'\]"):
        contres.functional.ode_block(x, w, b, params={k: v for k, v in params.items() if k != "norm_weight"}, **kw)
    with pytest.raises(ValueError, match=r"unexpected \['shift'\]"):
        contres.functional.ode_block(x, w, b, params={**params, "shift": params["norm_bias"]}, **kw)
    with pytest.raises(ValueError, match=r"params\['weight2'\] .* must have shape"):
        contres.functional.ode_block(x, w, b, params={**params, "weight2": params["weight2"][..., :1]}, **kw)
    with pytest.raises(TypeError, match=r"params\['bias2'\] has dtype"):
        contres.functional.ode_block(x, w, b, params={**params, "bias2": params["bias2"].float()}, **kw)


def test_load_state_dict_with_a_wrong_shape_keeps_torchs_error():
    _, layer, norm, options = BY_NAME["torchdiffeq"]
    block = chain_block(layer, norm, options)
    state = block.state_dict()
    state["weight2"] = state["weight2"][:, :, :3]
    with pytest.raises(RuntimeError, match=r"size mismatch for weight2"):
        block.load_state_dict(state)
