"""The controls of the CUDA paths' caches (contres.caches) in every build, and their LRU bookkeeping (csrc/lru.h)
compiled and run here. The caches at work on a GPU: tests/test_cuda_graphs.py and tests/test_cudnn_fusion_gpu.py."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import contres

ROOT = Path(__file__).resolve().parent.parent

GRAPH_KEYS = {"keys", "instances", "max_keys", "max_instances", "captures", "replays", "capture_failures",
              "evictions"}
PLAN_KEYS = {"plans", "max_plans", "builds", "build_failures", "evictions", "build_seconds"}


@pytest.fixture
def limits():
    graph, plan = contres.cuda_graph_cache_stats(), contres.cudnn_plan_cache_stats()
    yield
    contres.set_cuda_graph_cache_limit(graph["max_keys"], graph["max_instances"])
    contres.set_cudnn_plan_cache_limit(plan["max_plans"])


def test_stats_have_every_field_and_default_limits():
    graph, plan = contres.cuda_graph_cache_stats(), contres.cudnn_plan_cache_stats()
    assert set(graph) == GRAPH_KEYS and set(plan) == PLAN_KEYS
    assert all(isinstance(v, int) and v >= 0 for v in graph.values()), graph
    assert graph["max_keys"] == 16 and graph["max_instances"] == 32 and plan["max_plans"] == 256
    if not contres.build_info()["cuda_kernels"]:  # nothing can be cached without CUDA
        assert graph["keys"] == graph["instances"] == graph["captures"] == 0
        assert plan["plans"] == plan["builds"] == 0


def test_limits_round_trip_and_emptying_is_harmless(limits):
    contres.set_cuda_graph_cache_limit(3, 5)
    contres.set_cudnn_plan_cache_limit(7)
    assert contres.cuda_graph_cache_stats()["max_keys"] == 3
    assert contres.cuda_graph_cache_stats()["max_instances"] == 5
    assert contres.cudnn_plan_cache_stats()["max_plans"] == 7
    contres.set_cuda_graph_cache_limit(0, 0)  # a cache that holds nothing is allowed
    contres.empty_cuda_graph_cache()
    contres.empty_cudnn_plan_cache()
    assert contres.cuda_graph_cache_stats()["instances"] == 0 and contres.cudnn_plan_cache_stats()["plans"] == 0


@pytest.mark.parametrize("call", [
    lambda: contres.set_cuda_graph_cache_limit(-1, 4),
    lambda: contres.set_cuda_graph_cache_limit(4, -1),
    lambda: contres.set_cuda_graph_cache_limit(2.5, 4),
    lambda: contres.set_cuda_graph_cache_limit(True, 4),
    lambda: contres.set_cudnn_plan_cache_limit(-3),
    lambda: contres.set_cudnn_plan_cache_limit("8"),
], ids=["keys<0", "instances<0", "float", "bool", "plans<0", "str"])
def test_bad_limits_are_refused_and_change_nothing(limits, call):
    before = (contres.cuda_graph_cache_stats(), contres.cudnn_plan_cache_stats())
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        call()
    assert (contres.cuda_graph_cache_stats(), contres.cudnn_plan_cache_stats()) == before


def test_the_extension_checks_limits_itself(limits):
    """The compiled functions refuse a negative limit with the argument's name, whoever calls them."""
    with pytest.raises(ValueError, match="max_instances must be >= 0"):
        contres._C.cuda_graph_cache_set_limit(2, -1)
    with pytest.raises(ValueError, match="max_plans must be >= 0"):
        contres._C.cudnn_plan_cache_set_limit(-1)


def test_lru_bookkeeping(tmp_path):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "lru_test"
    subprocess.run([compiler, "-std=c++17", "-O1", "-Wall", "-Werror", "-I", str(ROOT / "csrc"),
                    str(ROOT / "tests" / "cpp" / "lru_test.cpp"), "-o", str(exe)], check=True, timeout=120)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
