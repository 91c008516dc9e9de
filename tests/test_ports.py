"""Models ported from the code people train, written here from their public definitions: the seed authors'
DynamicBlocks layers (DoubleSymLayer with TvNorm and both biases, DoubleLayer, PreactDoubleLayer, their rk4 block
with linearly interpolated control layers) and torchdiffeq's MNIST ODE function (GroupNorm, a time channel
concatenated to each convolution's input). Each is rebuilt as a contres.ODEBlock with the README's recipe, its
weights copied over, and must give the same output and the same gradient of every weight, fused and reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import contres
from conftest import assert_close_rel, random_like


# ----------------------------------------------------------------------------------- the seed authors' layers
class TvNorm(nn.Module):
    """x / sqrt(sum_c x^2 + eps), times a fixed scale of ones, plus a learned bias."""

    def __init__(self, channels, eps=1e-4):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        z = x / torch.sqrt(x.pow(2).sum(1, keepdim=True) + self.eps)
        return z * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class DoubleSymLayer(nn.Module):
    """-(convT(act(N(conv(x))), K) + b3): conv and convT share one kernel (hidden x channels), each its own bias."""

    def __init__(self, channels, hidden, act=torch.relu):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.norm = TvNorm(hidden)
        self.convt = nn.ConvTranspose2d(hidden, channels, 3, padding=1)
        self.convt.weight = self.conv.weight
        self.act = act

    def forward(self, x):
        return -self.convt(self.act(self.norm(self.conv(x))))


class DoubleLayer(nn.Module):
    """act(N2(conv2(act(N1(conv1(x))))))."""

    def __init__(self, channels, act=torch.relu):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1, self.norm2 = TvNorm(channels), TvNorm(channels)
        self.act = act

    def forward(self, x):
        return self.act(self.norm2(self.conv2(self.act(self.norm1(self.conv1(x))))))


class PreactDoubleLayer(DoubleLayer):
    """N2(conv2(act(N1(conv1(act(x))))))."""

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(self.act(x))))))


def randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    return module


def euler(f, x, n_steps, T=1.0):
    h, u = T / n_steps, x
    for k in range(n_steps):
        u = u + h * f(k * h, u)
    return u


def copy_into(block, names_to_tensors):
    """Each block parameter gets the stack of the given tensors (one per control)."""
    with torch.no_grad():
        for name, tensors in names_to_tensors.items():
            getattr(block, name).copy_(torch.stack([t.detach() for t in tensors]))


def assert_port_matches(block, theirs_fn, x, mapping, what):
    """The block (weights copied by `mapping`: block parameter -> their tensors, one per control) and their
    model: the same output, input gradient, and gradient of each of their weights."""
    gy = random_like(x)
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    y_ours = block(xs[0])
    names = list(mapping)
    g_ours = torch.autograd.grad(y_ours, [xs[0], *(getattr(block, n) for n in names)], gy)
    y_theirs = theirs_fn(xs[1])
    flat = [t for n in names for t in mapping[n]]
    g_flat = torch.autograd.grad(y_theirs, [xs[1], *flat], gy)
    assert_close_rel(y_ours, y_theirs, 1e-12, f"{what} output")
    assert_close_rel(g_ours[0], g_flat[0], 1e-10, f"{what} input gradient")
    floor = max(g.abs().max().item() for g in g_flat)  # a gradient zero in exact arithmetic: on the others' scale
    i = 1
    for n, g in zip(names, g_ours[1:]):
        theirs = torch.stack(g_flat[i:i + len(mapping[n])])
        i += len(mapping[n])
        assert_close_rel(g, theirs, 1e-10, f"{what} gradient of {n}", floor=floor)


SEED_CASES = [
    ("DoubleSymLayer", lambda: DoubleSymLayer(4, 6), ("conv", "norm", "bias", "act", "conv_t", "bias", "neg"),
     lambda m: {"weight": [m.conv.weight], "bias": [m.conv.bias], "shift": [m.norm.bias], "shift2": [m.convt.bias]},
     6),
    ("DoubleLayer", lambda: DoubleLayer(4), ("conv", "norm", "bias", "act", "conv", "norm", "bias", "act"),
     lambda m: {"weight": [m.conv1.weight], "bias": [m.conv1.bias], "shift": [m.norm1.bias],
                "weight2": [m.conv2.weight], "bias2": [m.conv2.bias], "shift2": [m.norm2.bias]}, None),
    ("PreactDoubleLayer", lambda: PreactDoubleLayer(4), ("act", "conv", "norm", "bias", "act", "conv", "norm", "bias"),
     lambda m: {"weight": [m.conv1.weight], "bias": [m.conv1.bias], "shift": [m.norm1.bias],
                "weight2": [m.conv2.weight], "bias2": [m.conv2.bias], "shift2": [m.norm2.bias]}, None),
]


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("case", SEED_CASES, ids=[c[0] for c in SEED_CASES])
def test_seed_layer_as_an_euler_block(case, backend):
    name, make, layer, mapping, hidden = case
    layer_module = randomise(make().double(), seed=1)
    block = contres.ODEBlock(4, 3, 1, layer=layer, norm="tv", norm_eps=1e-4, hidden_channels=hidden,
                             backend=backend, dtype=torch.float64)
    copy_into(block, mapping(layer_module))
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    assert_port_matches(block, lambda u: euler(lambda t, v: layer_module(v), u, 3), x, mapping(layer_module), name)


def interpolated(controls, t, T):
    """The seed's rk4 state layer at time t: each parameter linearly interpolated between the control layers at
    the nodes jT/(M - 1)."""
    M = len(controls)
    s = t * (M - 1) / T
    j = min(int(s), M - 2)
    a = s - j
    params = []
    for p0, p1 in zip(controls[j].parameters(), controls[j + 1].parameters()):
        params.append((1 - a) * p0 + a * p1)
    return params


def seed_rk4(controls, x, n_steps, T=1.0):
    """The seed authors' rk4 block: classic rk4 with the control layers interpolated at t, t + h/2 (twice) and
    t + h (times on a binary grid here, so their float arithmetic picks the same controls as contres')."""
    def f(params, u):
        conv_w, conv_b, tv_bias, convt_b = params
        z = F.conv2d(u, conv_w, conv_b, padding=1)
        z = z / torch.sqrt(z.pow(2).sum(1, keepdim=True) + 1e-4) + tv_bias.view(1, -1, 1, 1)
        return -F.conv_transpose2d(torch.relu(z), conv_w, convt_b, padding=1)
    h, u = T / n_steps, x
    for k in range(n_steps):
        t = k * h
        p1, p2, p4 = (interpolated(controls, s, T) for s in (t, t + h / 2, t + h))
        k1 = f(p1, u)
        k2 = f(p2, u + h / 2 * k1)
        k3 = f(p2, u + h / 2 * k2)
        k4 = f(p4, u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return u


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_seed_rknet_block(backend):
    """Three control layers (nodes 0, T/2, T), four rk4 steps: contres' rk4 with linear controls."""
    controls = [randomise(DoubleSymLayer(4, 6).double(), seed=j) for j in range(3)]
    block = contres.ODEBlock(4, 4, 3, layer=("conv", "norm", "bias", "act", "conv_t", "bias", "neg"), norm="tv",
                             norm_eps=1e-4, hidden_channels=6, interp="linear", method="rk4", backend=backend,
                             dtype=torch.float64)
    mapping = {"weight": [c.conv.weight for c in controls], "bias": [c.conv.bias for c in controls],
               "shift": [c.norm.bias for c in controls], "shift2": [c.convt.bias for c in controls]}
    copy_into(block, mapping)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    assert_port_matches(block, lambda u: seed_rk4(controls, u, 4), x, mapping, "rk4 block")


# ------------------------------------------------------------------------------------ torchdiffeq's ODE function
class ConcatConv2d(nn.Module):
    """A 3x3 convolution of torch.cat([t * 1, x], 1)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.layer = nn.Conv2d(dim_in + 1, dim_out, 3, padding=1)

    def forward(self, t, x):
        return self.layer(torch.cat([torch.ones_like(x[:, :1]) * t, x], 1))


class ODEfunc(nn.Module):
    """GN(conv2(t, relu(GN(conv1(t, relu(GN(x))))))), GN = GroupNorm(min(32, dim), dim)."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.GroupNorm(min(32, dim), dim) for _ in range(3))
        self.conv1, self.conv2 = ConcatConv2d(dim, dim), ConcatConv2d(dim, dim)

    def forward(self, t, x):
        out = self.conv1(t, torch.relu(self.norm1(x)))
        return self.norm3(self.conv2(t, torch.relu(self.norm2(out))))


def torchdiffeq_mapping(func):
    return {"norm_weight": [func.norm1.weight], "norm_bias": [func.norm1.bias],
            "weight": [func.conv1.layer.weight], "bias": [func.conv1.layer.bias],
            "norm_weight2": [func.norm2.weight], "norm_bias2": [func.norm2.bias],
            "weight2": [func.conv2.layer.weight], "bias2": [func.conv2.layer.bias],
            "norm_weight3": [func.norm3.weight], "norm_bias3": [func.norm3.bias]}


def torchdiffeq_block(func, dim, n_steps, backend, dtype):
    block = contres.ODEBlock(dim, n_steps, 1, layer=("norm", "act", "conv", "norm", "act", "conv", "norm"),
                             norm="group", norm_affine=True, time_channel=True, backend=backend, dtype=dtype)
    copy_into(block, torchdiffeq_mapping(func))
    return block


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dim", [8, 64], ids=["dim8", "dim64"])
def test_torchdiffeq_odefunc(dim, backend):
    func = randomise(ODEfunc(dim).double(), seed=2)
    with torch.no_grad():  # GroupNorm's scale around 1, as trained
        for norm in (func.norm1, func.norm2, func.norm3):
            norm.weight.add_(1.0)
    block = torchdiffeq_block(func, dim, 4, backend, torch.float64)
    x = torch.randn(2, dim, 7, 7, dtype=torch.float64)
    assert_port_matches(block, lambda u: euler(func, u, 4), x, torchdiffeq_mapping(func), "torchdiffeq ODEfunc")


def test_torchdiffeq_odeint_when_installed():
    """With torchdiffeq itself: odeint(method='euler') on the same fixed grid gives the block's output."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = randomise(ODEfunc(8).double(), seed=3)
    block = torchdiffeq_block(func, 8, 4, "fused", torch.float64)
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    theirs = torchdiffeq.odeint(func, x, torch.tensor([0.0, 1.0], dtype=torch.float64), method="euler",
                                options={"step_size": 0.25})[-1]
    assert_close_rel(block(x), theirs, 1e-12, "odeint")
