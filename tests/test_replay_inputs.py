"""What a CUDA-graph replay hands the ops (csrc/cuda/graphs/graph_cache.cpp), checked on every device here.

A graph's forward runs on static copies of the inputs (x copied into channels_last, the kernels and biases copied
contiguous), and its backward on the graph's own saved states and aux -- which for some configurations are empty
(checkpointed and reversible runs keep no aux; an empty tensor has no data pointer) -- beside static copies of
grad_out and x. Two such configurations (euler/double_sym with checkpoint 2, leapfrog reversible) crashed in their
replays on the GPU. So: on these inputs the ops must give bitwise the same results as on the caller's own, an empty
aux must never be read, and an empty batch must work (the cache does not capture it)."""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE_PARAMS, assert_bitwise_equal

H = 0.25
CONFIGS = {  # layer, activation, checkpoint, norm, method, memory
    "euler-double_sym-tanh-ckpt2": ("double_sym", "tanh", 2, "none", "euler", "states"),
    "leapfrog-relu-reversible": ("single", "relu", 0, "none", "leapfrog", "reversible"),
    "euler-single-relu": ("single", "relu", 0, "none", "euler", "states"),
    "rk4-single-sigmoid": ("single", "sigmoid", 0, "none", "rk4", "states"),
    "euler-single-identity-ckpt3": ("single", "identity", 3, "none", "euler", "states"),
}


def inputs(device, config, B=2, C=4, size=6, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = 2 * N + 1 if config[4] == "rk4" else N
    x = torch.randn(B, C, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(rows, C, C, 3, 3, generator=g, dtype=torch.float64) * 0.2
    b = torch.randn(rows, C, generator=g, dtype=torch.float64) * 0.2
    gy = torch.randn(B, C, size, size, generator=g, dtype=torch.float64)
    return tuple(t.to(device) for t in (x, w, b, gy))


def forward(x, w, b, config):
    return torch.ops.contres.ode_forward(x, w, b, H, *config)


def backward(gy, x, w, b, states, aux, config):
    return torch.ops.contres.ode_backward(gy, x, w, b, states, aux, H, *config)


def static_copy(t, channels_last=False):
    """What the cache keeps of an input: a fresh copy (channels_last for x and grad_out)."""
    if channels_last:
        return t.contiguous(memory_format=torch.channels_last).clone(memory_format=torch.channels_last)
    return t.contiguous().clone()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_copies_give_the_same_results(device, name):
    config = CONFIGS[name]
    x, w, b, gy = inputs(device, config)
    out, states, aux = forward(x, w, b, config)
    grads = backward(gy, x, w, b, states, aux, config)
    xs, ws, bs = static_copy(x, True), static_copy(w), static_copy(b)
    out_s, states_s, aux_s = forward(xs, ws, bs, config)
    assert_bitwise_equal(out_s.contiguous(), out, "u_N from the static copies")
    assert_bitwise_equal(states_s, states, "states")
    assert len(aux_s) == len(aux)
    for a_s, a in zip(aux_s, aux):
        assert_bitwise_equal(a_s, a, "aux")
    grads_s = backward(static_copy(gy, True), static_copy(x, True), ws, bs, states_s, aux_s, config)
    for what, a, r in zip(("dx", "dweight", "dbias", "drift"), grads_s, grads):
        assert_bitwise_equal(a.contiguous(), r.contiguous(), what)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c[2] or c[5] == "reversible"])
def test_an_empty_aux_is_never_read(device, name):
    """The configurations that keep no aux return no aux tensors, and a backward (on CUDA: its graph's replay
    after a plain warm-up call) on a list it did not make gives the same bits."""
    config = CONFIGS[name]
    x, w, b, gy = inputs(device, config)
    _, states, aux = forward(x, w, b, config)
    assert aux == [], [a.shape for a in aux]
    for what, a, r in zip(("dx", "dweight", "dbias", "drift"), backward(gy, x, w, b, states, [], config)[:4],
                          backward(gy, x, w, b, states, aux, config)[:4]):
        assert_bitwise_equal(a, r, what)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_empty_batch(device, name):
    config = CONFIGS[name]
    x, w, b, gy = inputs(device, config, B=0)
    out, states, aux = forward(x, w, b, config)
    assert out.shape == x.shape and states.numel() == 0 and sum(a.numel() for a in aux) == 0
    dx, dw, db, drift, _ = backward(gy, x, w, b, states, aux, config)
    assert dx.shape == x.shape and bool((dw == 0).all()) and bool((db == 0).all()) and float(drift) == 0
