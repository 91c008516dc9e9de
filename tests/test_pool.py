"""The CPU buffer pool (csrc/cpu/buffer_pool.h): a block it hands out is never smaller than asked (a request just
above a cached block's size, batch N then N + 1, and random growing and shrinking batches, all checked against the
reference), and what it holds follows the working set (a smaller batch reuses a larger block; blocks a change of
shapes leaves behind are given back)."""
from __future__ import annotations

import random

import pytest
import torch

import contres
from contres import pool
from conftest import assert_close_rel, make_inputs, random_like, run_block, tol_for

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_pool():
    """Every test starts from an empty pool with the default limit, and leaves it so."""
    old = contres.cpu_pool_stats()["limit_bytes"]
    contres.set_cpu_pool_limit(1 << 30)
    contres.empty_cpu_pool()
    contres.reset_cpu_pool_counters()
    yield
    contres.set_cpu_pool_limit(old)
    contres.empty_cpu_pool()


def _pooled(nbytes: int) -> torch.Tensor:
    """A tensor the pool serves, of exactly nbytes (a multiple of 8): the saved states of a 2-step block whose
    state is one float64 row."""
    assert nbytes % 8 == 0
    x = torch.zeros(1, 1, 1, nbytes // 8, dtype=torch.float64)
    w, b = torch.full((2, 1, 1, 1, 1), 0.1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    _, states, _ = torch.ops.contres.ode_forward(x, w, b, 0.5, "single", "identity", 0)
    assert states.untyped_storage().nbytes() == nbytes
    return states


def _served(nbytes: int) -> int:
    """The size of the block a request of nbytes gets; the request's whole range is written."""
    t = _pooled(nbytes)
    got = pool.block_bytes(t)
    t.fill_(1.0)
    return got


@pytest.mark.parametrize("base", [MIB, 3 * MIB + 8 * 13], ids=["1MiB", "3MiB+104"])
def test_block_is_never_smaller_than_asked(base):
    """Requests just above, at and below the size of the one cached block: each gets a block at least its size
    (and at most twice it); the smaller ones are served by the cached block itself."""
    for ask in (base + 8, base + base // 64 // 8 * 8, base + base // 16 // 8 * 8 - 8, base + base // 16 // 8 * 8,
                base, base - 8, base - base // 16 // 8 * 8, base // 2 // 8 * 8 + 8, base // 2 // 8 * 8 - 8 * 1024):
        contres.empty_cpu_pool()
        assert _served(base) == base  # a fresh block of its own size, now idle
        assert contres.cpu_pool_stats()["cached_bytes"] == base
        hits = contres.cpu_pool_stats()["hits"]
        got = _served(ask)
        if ask < MIB:  # below the pool's threshold: malloc serves it
            assert got == 0 and contres.cpu_pool_stats()["cached_bytes"] == base
            continue
        assert got >= ask, f"a request of {ask} bytes got a block of {got} bytes (cached: {base})"
        assert got <= 2 * ask + 8, f"a request of {ask} bytes got a block of {got} bytes, more than twice it"
        if base // 2 <= ask <= base:
            assert got == base and contres.cpu_pool_stats()["hits"] == hits + 1, "the cached block fits"
    assert contres.cpu_pool_stats()["in_use_bytes"] == 0


def test_block_bytes_of_tensors_the_pool_did_not_serve():
    assert pool.block_bytes(torch.empty(4 * MIB, dtype=torch.uint8)) == 0
    assert pool.block_bytes(_pooled(8 * 1024)) == 0  # below the pool's 1 MiB threshold


@pytest.mark.parametrize("method,layer,activation", [("euler", "single", "relu"), ("rk4", "double_sym", "tanh"),
                                                     ("leapfrog", "single", "sigmoid")])
def test_batch_n_then_n_plus_1_matches_the_reference(method, layer, activation):
    """Batch 16, then 17: the second call's states (3 MiB and more) are 1/16 larger than the blocks the first
    left in the pool."""
    kw = dict(T=1.0, n_steps=4, layer=layer, activation=activation, interp="linear", method=method)
    for batch in (16, 17, 16, 17):
        x, w, b = make_inputs(batch, 16, 32, 32, 3, 3, dtype=torch.float32, seed=batch)  # |u| = B/16 MiB
        gy = random_like(x, seed=batch)
        y, g = run_block(x, w, b, gy, backend="fused", **kw)
        y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
        assert_close_rel(y, y_ref, tol_for(torch.float32), f"batch {batch}: output")
        for name, a, r in zip(("x", "weight", "bias"), g, g_ref):
            assert_close_rel(a, r, tol_for(torch.float32, grad=True), f"batch {batch}: grad {name}")
    assert contres.cpu_pool_stats()["hits"] > 0


def test_random_growing_and_shrinking_batches_match_the_reference():
    """Twenty batch sizes, seeded and random: up from 12 in steps of 1 or 2 (a new largest batch asks for a few
    percent more than the blocks the pool holds), down in steps of 3 to 5, and up again; every call against the
    reference, and the pool within its working set and limit after each."""
    r = random.Random(19)
    sizes = [12]
    for steps in ([1, 1, 2], [-3, -4, -5], [1, 2]):
        for _ in range(8 if steps[0] > 0 else 4):
            sizes.append(max(8, sizes[-1] + r.choice(steps)))
    kw = dict(T=1.0, n_steps=4, layer="double_sym", activation="tanh", interp="constant", method="euler")
    for step, batch in enumerate(sizes):
        x, w, b = make_inputs(batch, 8, 32, 32, 2, 3, dtype=torch.float64, seed=step)  # 3 states of B/16 MiB
        gy = random_like(x, seed=step)
        y, g = run_block(x, w, b, gy, backend="fused", **kw)
        y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
        what = f"step {step}, batch {batch} (sizes {sizes})"
        assert_close_rel(y, y_ref, tol_for(torch.float64), what)
        for name, a, ref in zip(("x", "weight", "bias"), g, g_ref):
            assert_close_rel(a, ref, tol_for(torch.float64, grad=True), f"{what}: grad {name}")
        s = contres.cpu_pool_stats()
        assert s["in_use_bytes"] == 0 and s["cached_bytes"] <= min(s["working_set_bytes"], s["limit_bytes"]), s
    s = contres.cpu_pool_stats()
    assert s["hits"] > 0 and s["misses"] > 0 and s["evictions"] > 0, s


def _train_step(block, opt, batch):
    x = torch.randn(batch, block.channels, 32, 32)
    opt.zero_grad()
    block(x).square().mean().backward()
    opt.step()


def test_footprint_follows_the_working_set():
    """A fixed shape is served from the pool after its first step; a smaller batch reuses the larger one's blocks;
    after steps at a much smaller batch, the pool holds no more than those steps need."""
    torch.manual_seed(0)
    block = contres.ODEBlock(16, n_steps=4, backend="fused")
    opt = torch.optim.SGD(block.parameters(), lr=1e-3)
    _train_step(block, opt, 32)  # states 3 x 2 MiB, masks 4 x 64 KiB
    big = contres.cpu_pool_stats()
    assert big["cached_bytes"] > 0 and big["working_set_bytes"] >= big["cached_bytes"]
    contres.reset_cpu_pool_counters()
    for _ in range(3):
        _train_step(block, opt, 32)
    assert contres.cpu_pool_stats()["misses"] == 0, "a fixed shape must be served from the pool"
    _train_step(block, opt, 24)  # 3/4 of the size: the cached blocks serve it
    assert contres.cpu_pool_stats()["misses"] == 0
    for _ in range(2):
        _train_step(block, opt, 8)  # 1/4: fresh blocks, and the large ones go
    small = contres.cpu_pool_stats()
    assert small["misses"] > 0 and small["evictions"] > 0
    assert small["cached_bytes"] <= small["working_set_bytes"] <= big["cached_bytes"] // 3, (big, small)


def test_stats_are_visible():
    s = contres.cpu_pool_stats()
    assert set(s) == {"cached_bytes", "cached_blocks", "limit_bytes", "in_use_bytes", "working_set_bytes", "hits",
                      "misses", "evictions"}
    held = _pooled(2 * MIB)
    s = contres.cpu_pool_stats()
    assert s["in_use_bytes"] == 2 * MIB and s["working_set_bytes"] >= 2 * MIB and s["misses"] == 1
    del held
    s = contres.cpu_pool_stats()
    assert s["in_use_bytes"] == 0 and s["cached_bytes"] == 2 * MIB and s["cached_blocks"] == 1
