"""contres' own CPU convolution (contres.set_cpu_paths(conv="own"), csrc/cpu/own_conv.*): every convolution of the
ops -- forward, data gradient, weight gradient, conv_t -- on ATen's brgemm microkernel, checked through whole blocks
against the reference for both presets, chains with a hidden width and a time channel, every method, checkpointing,
kernel sizes 1 to 7 (wider than the image too), odd channel counts and a batch of one; the paths it reports; that
other dtypes stay on ATen's; and that its weight gradient does not depend on the threads."""
from __future__ import annotations

import pytest
import torch

import contres
from conftest import assert_close_rel, compare_with_reference, make_inputs, random_like, run_block
from test_chains import BY_NAME, assert_matches_reference, chain_block, inputs


@pytest.fixture
def own_conv():
    contres.set_cpu_paths(conv="own")
    yield
    contres.set_cpu_paths(conv="auto")


CASES = [  # B, C, H, W, N, M, k, layer, activation, method, checkpoint
    (2, 3, 5, 7, 3, 2, 3, "single", "relu", "euler", False),
    (2, 3, 5, 7, 3, 2, 3, "double_sym", "tanh", "euler", False),
    (1, 8, 6, 6, 2, 1, 3, "single", "sigmoid", "rk4", False),
    (3, 12, 4, 9, 4, 2, 3, "double_sym", "leaky_relu", "leapfrog", 2),
    (2, 4, 7, 5, 2, 2, 1, "single", "tanh", "euler", False),
    (2, 4, 7, 5, 2, 2, 5, "double_sym", "relu", "rk4", True),
    (1, 3, 4, 3, 2, 1, 7, "single", "relu", "euler", False),  # the kernel wider than the image
    (2, 1, 1, 1, 3, 2, 3, "double_sym", "sigmoid", "euler", False),  # one pixel, one channel
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}H{}W{}N{}M{}k{}-{}-{}-{}-ckpt{}".format(*c))
def test_presets_match_reference(own_conv, case):
    B, C, H, W, N, M, k, layer, activation, method, checkpoint = case
    for dtype in (torch.float32,):
        compare_with_reference("cpu", dtype, B=B, C=C, H=H, W=W, N=N, M=M, k=k, layer=layer, activation=activation,
                               interp="linear", checkpoint=checkpoint, method=method)
    assert contres.ops.last_paths() == {"forward": "cpu:own", "backward": "cpu:own"}


@pytest.mark.parametrize("name", ["torchdiffeq", "seed_double_sym_tv", "conv_conv", "double_sym_hidden_time"])
def test_chains_match_reference(own_conv, name):
    _, layer, norm, options = BY_NAME[name]
    block = chain_block(layer, norm, options, hidden=6, method="rk4", dtype=torch.float32)
    assert_matches_reference(block, inputs(dtype=torch.float32), torch.float32, name)


def test_float64_and_mixed_precision_stay_on_aten(own_conv):
    """The own convolution is float32's: float64 (and the bf16 convolutions of mixed precision) run ATen's."""
    compare_with_reference("cpu", torch.float64, B=2, C=3, H=4, W=5, N=2, M=2, k=3, layer="single",
                           activation="tanh", interp="linear")
    assert contres.ops.last_paths()["forward"] == "cpu:aten"


def test_paths_are_named_and_checked():
    assert contres.cpu_paths() == {"conv": "auto"}
    contres.set_cpu_paths(conv="aten")
    try:
        assert contres.cpu_paths() == {"conv": "aten"}
    finally:
        contres.set_cpu_paths(conv="auto")
    with pytest.raises(ValueError, match=r"the CPU convolution path must be one of auto, aten, own"):
        contres.set_cpu_paths(conv="oneDNN")
    assert contres.cpu_paths() == {"conv": "auto"}


def test_own_weight_gradient_does_not_depend_on_the_threads(own_conv):
    """Its partial sums are per fixed chunk of images, added in order."""
    x, w, b = make_inputs(17, 8, 6, 6, 2, 3, dtype=torch.float32, seed=3)
    gy = random_like(x)
    kw = dict(T=1.0, n_steps=2, layer="double_sym", activation="tanh", interp="constant", backend="fused")
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_block(x, w, b, gy, **kw))
    finally:
        torch.set_num_threads(threads)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2) and all(torch.equal(a, c) for a, c in zip(g1, g2))


def test_own_and_aten_agree_in_float32(own_conv):
    x, w, b = make_inputs(4, 16, 9, 9, 3, 3, dtype=torch.float32, seed=4)
    gy = random_like(x)
    kw = dict(T=1.0, n_steps=3, layer="double_sym", activation="tanh", interp="linear", backend="fused")
    own = run_block(x, w, b, gy, **kw)
    contres.set_cpu_paths(conv="aten")
    aten = run_block(x, w, b, gy, **kw)
    assert_close_rel(own[0], aten[0], 1e-5, "output")
    for a, r in zip(own[1], aten[1]):
        assert_close_rel(a, r, 1e-4, "gradient")
