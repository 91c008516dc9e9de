"""Past the happy path: hundreds of random configurations against the reference (seeded; a failure names its
seed), eight threads at once, and memory that stays flat over long runs (the CPU buffer pool is bounded)."""
from __future__ import annotations

import random
import threading

import pytest
import torch

import contres
from conftest import assert_close_rel, make_inputs, random_like, run_block, tol_for

N_RANDOM = 320


def _random_config(seed: int) -> dict:
    r = random.Random(seed)
    method = r.choice(["euler", "euler", "rk4", "leapfrog"])
    layer = r.choice(["single", "double_sym"])
    dtype = r.choice([torch.float64, torch.float64, torch.float32])
    n_steps = r.randint(1, 6)
    memory = "reversible" if method == "leapfrog" and r.random() < 0.3 else "states"
    return dict(
        B=r.randint(0 if r.random() < 0.05 else 1, 3), C=r.randint(1, 9), H=r.randint(1, 9), W=r.randint(1, 9),
        k=r.choice([1, 3, 3, 5]), M=r.randint(1, 5), N=n_steps, layer=layer,
        activation=r.choice(["identity", "relu", "leaky_relu", "tanh", "sigmoid"]),
        interp=r.choice(["constant", "linear"]), norm=r.choice(["none", "none", "tv"]), method=method,
        memory=memory, checkpoint=False if memory == "reversible" else r.choice([False, False, True, 1, 2, 5]),
        layout=r.choice(["nchw", "channels_last", "strided"]), dtype=dtype, T=r.choice([0.5, 1.0, 2.0]))


def _layout(x, layout):
    if layout == "channels_last":
        return x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    if layout == "strided":
        big = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype)
        big[..., ::2] = x.detach()
        return big[..., ::2].requires_grad_()
    return x


@pytest.mark.parametrize("block", range(8))
def test_random_configurations(block):
    """N_RANDOM configurations in 8 blocks; each is reproducible from its seed (_random_config(seed))."""
    for seed in range(block * N_RANDOM // 8, (block + 1) * N_RANDOM // 8):
        cfg = _random_config(seed)
        x, w, b = make_inputs(cfg["B"], cfg["C"], cfg["H"], cfg["W"], cfg["M"], cfg["k"], dtype=cfg["dtype"],
                              seed=seed, scale=0.3)
        x = _layout(x, cfg["layout"])
        kw = {k: cfg[k] for k in ("T", "layer", "activation", "interp", "norm", "method")}
        kw["n_steps"] = cfg["N"]
        gy = random_like(x, seed=seed)
        try:
            y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
            y, g = run_block(x, w, b, gy, backend="fused", checkpoint=cfg["checkpoint"], memory=cfg["memory"], **kw)
            assert y.shape == x.shape and y.stride() == torch.empty_like(x).stride()
            assert_close_rel(y, y_ref, 10 * tol_for(cfg["dtype"]), "output")
            for name, a, r in zip(("x", "weight", "bias"), g, g_ref):
                assert_close_rel(a, r, 10 * tol_for(cfg["dtype"], grad=True), f"grad {name}")
        except AssertionError as exc:
            raise AssertionError(f"random configuration seed={seed}: {cfg}: {exc}") from None


def test_eight_threads_give_the_sequential_results():
    """Eight Python threads run forward + backward at once (the CPU pool is shared state): each gets what it gets
    alone."""
    configs = [dict(layer=layer, activation=act, method=method, checkpoint=ck)
               for layer, act, method, ck in [("single", "relu", "euler", False), ("double_sym", "tanh", "rk4", 2),
                                              ("single", "sigmoid", "leapfrog", False), ("single", "relu", "rk4", 1),
                                              ("double_sym", "leaky_relu", "euler", True),
                                              ("single", "tanh", "leapfrog", 3), ("single", "identity", "euler", 2),
                                              ("double_sym", "relu", "leapfrog", False)]]
    inputs = [make_inputs(4, 8, 24, 24, 3, 3, dtype=torch.float32, seed=i) for i in range(8)]  # ~1 MiB states
    kw = dict(T=1.0, n_steps=4, interp="linear", backend="fused")
    results, errors = [None] * 8, []

    def work(i, repeats=3):
        try:
            x, w, b = inputs[i]
            for _ in range(repeats):
                results[i] = run_block(x, w, b, random_like(x, seed=i), **kw, **configs[i])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    # Each alone first, in a thread of its own too: a new thread's OpenMP team has its own size, and oneDNN's
    # weight gradient rounds differently with another number of threads.
    for i in range(8):
        alone = threading.Thread(target=work, args=(i, 1))
        alone.start()
        alone.join()
    expected = list(results)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, ((y, g), (y0, g0)) in enumerate(zip(results, expected)):
        assert torch.equal(y, y0), f"thread {i} output"
        for a, r in zip(g, g0):
            assert torch.equal(a, r), f"thread {i} gradient"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_pool_bounded_and_memory_flat_over_200_iterations():
    """200 training iterations whose saved buffers go through the pool: 100 at one batch size (the pool serves
    them), then 100 cycling through four sizes under a limit smaller than their sum (the pool evicts the stale
    sizes and never holds more idle bytes than the limit); the process's memory stays flat."""
    old = contres.cpu_pool_stats()["limit_bytes"]
    torch.manual_seed(0)
    block = contres.ODEBlock(16, n_steps=4, backend="fused")
    opt = torch.optim.SGD(block.parameters(), lr=1e-3)

    def iteration(batch):
        x = torch.randn(batch, 16, 32, 32)  # saved states of 2-3.5 MiB: pooled
        opt.zero_grad()
        block(x).square().mean().backward()
        opt.step()

    try:
        contres.set_cpu_pool_limit(1 << 30)
        contres.reset_cpu_pool_counters()
        for _ in range(100):
            iteration(8)
        assert contres.cpu_pool_stats()["hits"] >= 95
        limit = 5 << 20
        contres.set_cpu_pool_limit(limit)
        rss = []
        for it in range(100):
            iteration((8, 10, 12, 14)[it % 4])
            assert contres.cpu_pool_stats()["cached_bytes"] <= limit
            rss.append(_rss_bytes())
        assert contres.cpu_pool_stats()["evictions"] > 0
        growth = max(rss[50:]) - max(rss[10:50])
        assert growth < 16 << 20, f"RSS grew by {growth / 2**20:.1f} MiB after warm-up"
        contres.empty_cpu_pool()
        assert contres.cpu_pool_stats()["cached_bytes"] == 0
    finally:
        contres.set_cpu_pool_limit(old)


def test_pool_limit_zero_keeps_nothing_and_results_are_unchanged():
    x, w, b = make_inputs(8, 16, 32, 32, 3, 3, dtype=torch.float32, seed=1)
    kw = dict(T=1.0, n_steps=3, backend="fused", layer="single", activation="relu")
    gy = random_like(x)
    want = run_block(x, w, b, gy, **kw)
    old = contres.cpu_pool_stats()["limit_bytes"]
    try:
        contres.set_cpu_pool_limit(0)
        assert contres.cpu_pool_stats()["cached_bytes"] == 0
        got = run_block(x, w, b, gy, **kw)
        assert contres.cpu_pool_stats()["cached_bytes"] == 0
    finally:
        contres.set_cpu_pool_limit(old)
    for a, r in zip((got[0],) + got[1], (want[0],) + want[1]):
        assert torch.equal(a, r)
    with pytest.raises(ValueError, match="nbytes must be an integer >= 0"):
        contres.set_cpu_pool_limit(-1)
