"""CUDA graphs of whole op calls (set_cuda_paths(graphs="on")): replays give the plain path's results on new data,
instances are not overwritten while autograd holds their saved tensors, a caller's own capture is left alone,
memory stays flat, the key holds the precision switches, the cache is bounded and visible, a failed capture leaves
nothing broken, and other threads cannot break a capture. GPU only (the controls alone: test_cuda_caches.py)."""
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


def _graph_calls(block, x, n):
    """n forward+backward calls; the paths each took."""
    paths = []
    for _ in range(n):
        xi = x.clone().requires_grad_()
        block(xi).square().sum().backward()
        paths.append(dict(contres.ops.last_paths()))
    return paths


@pytest.fixture
def cache_limits():
    stats = contres.cuda_graph_cache_stats()
    yield
    contres.set_cuda_graph_cache_limit(stats["max_keys"], stats["max_instances"])


def test_precision_switches_are_part_of_the_key(graphs_on):
    """A graph captured with TF32 off is not replayed with TF32 on (or under determinism's cuDNN switch): the first
    call after a switch runs plainly again, as warm-up of a key of its own."""
    torch.manual_seed(4)
    block = contres.ODEBlock(8, n_steps=2, backend="fused").cuda()
    x = torch.randn(2, 8, 8, 8, device="cuda")
    assert [p["forward"] for p in _graph_calls(block, x, 3)] == ["cuda:aten"] + ["cuda:aten+graph"] * 2
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert _graph_calls(block, x, 1)[0]["forward"] == "cuda:aten"
        torch.backends.cudnn.allow_tf32 = False
        assert _graph_calls(block, x, 1)[0]["forward"] == "cuda:aten+graph"
        torch.backends.cudnn.deterministic = True
        assert _graph_calls(block, x, 1)[0]["forward"] == "cuda:aten"
    finally:
        torch.backends.cudnn.deterministic = False


def test_cache_is_bounded_and_visible(graphs_on, cache_limits):
    contres.empty_cuda_graph_cache()
    contres.set_cuda_graph_cache_limit(max_keys=2, max_instances=2)
    before = contres.cuda_graph_cache_stats()
    torch.manual_seed(5)
    block = contres.ODEBlock(8, n_steps=2, backend="fused").cuda()
    for size in (6, 7, 8):  # three keys: the first is evicted for the third
        _graph_calls(block, torch.randn(2, 8, size, size, device="cuda"), 3)
    s = contres.cuda_graph_cache_stats()
    assert s["keys"] == 2 and s["instances"] <= 2, s
    assert s["captures"] - before["captures"] >= 6 and s["replays"] > before["replays"], s  # fwd + bwd per key
    assert s["evictions"] > before["evictions"], s
    contres.set_cuda_graph_cache_limit(max_keys=0, max_instances=0)
    assert contres.cuda_graph_cache_stats()["instances"] == 0
    assert _graph_calls(block, torch.randn(2, 8, 6, 6, device="cuda"), 3)[-1]["forward"] == "cuda:aten"
    contres.set_cuda_graph_cache_limit(max_keys=4, max_instances=4)
    contres.empty_cuda_graph_cache()
    s = contres.cuda_graph_cache_stats()
    assert s["keys"] == 0 and s["instances"] == 0, s


def test_a_failed_capture_leaves_nothing_broken(graphs_on):
    """A capture that breaks (as one does when the captured work synchronises) warns, runs that call step by step,
    marks the key, and leaves the allocator and the streams fit for anything after: the same block without
    graphs, another key's capture, and a capture of the caller's own."""
    torch.manual_seed(6)
    block = contres.ODEBlock(8, n_steps=3, backend="fused").cuda()
    x = torch.randn(2, 8, 9, 9, device="cuda")
    failures = contres.cuda_graph_cache_stats()["capture_failures"]
    _graph_calls(block, x, 1)  # warm-up
    contres._C._cuda_graph_break_next_capture()
    with pytest.warns(UserWarning, match="capturing a CUDA graph of the ODE block failed"):
        paths = _graph_calls(block, x, 1)
    assert paths[0]["forward"] == "cuda:aten", paths
    assert contres.cuda_graph_cache_stats()["capture_failures"] == failures + 1
    assert _graph_calls(block, x, 2)[-1]["forward"] == "cuda:aten"  # the key is not tried again
    # Everything after works: plain calls, another key's graphs, the caller's own capture, emptying the cache.
    y = torch.randn(2, 8, 10, 10, device="cuda")
    assert [p["forward"] for p in _graph_calls(block, y, 3)][-1] == "cuda:aten+graph"
    static = torch.randn(64, 64, device="cuda")
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        out = static @ static
    static.copy_(torch.eye(64, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.eye(64, device="cuda"))
    contres.empty_cuda_graph_cache()
    torch.cuda.empty_cache()
    big = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # fresh memory from the default pool
    big.fill_(1)
    torch.cuda.synchronize()
    assert int(big[-1]) == 1


def test_other_threads_do_not_break_a_capture(graphs_on):
    """Capture is thread-local: another thread that takes fresh memory from the driver (cudaMalloc) meanwhile
    neither breaks it nor is refused."""
    import threading

    torch.manual_seed(7)
    block = contres.ODEBlock(16, n_steps=4, backend="fused").cuda()
    failures = contres.cuda_graph_cache_stats()["capture_failures"]
    stop, errors, held = threading.Event(), [], []

    def churn():  # 2 MiB blocks kept alive: the allocator asks the driver for a new segment every few of them
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                while not stop.is_set() and len(held) < 2000:
                    held.append(torch.full((2 << 20,), 3, dtype=torch.uint8, device="cuda"))
            stream.synchronize()
        except Exception as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for size in (9, 10, 11):
            paths = _graph_calls(block, torch.randn(4, 16, size, size, device="cuda"), 3)
            assert paths[-1] == {"forward": "cuda:aten+graph", "backward": "cuda:aten+graph"}, paths
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert held and all(int(t[-1]) == 3 for t in held[:: max(1, len(held) // 10)])
    assert contres.cuda_graph_cache_stats()["capture_failures"] == failures


def test_an_empty_batch_is_not_captured(graphs_on):
    block = contres.ODEBlock(8, n_steps=2, backend="fused").cuda()
    captures = contres.cuda_graph_cache_stats()["captures"]
    x = torch.randn(0, 8, 6, 6, device="cuda", requires_grad=True)
    for _ in range(3):
        y = block(x)
        assert y.shape == x.shape and contres.ops.last_paths()["forward"] == "cuda:aten"
        y.sum().backward()
    assert contres.cuda_graph_cache_stats()["captures"] == captures
