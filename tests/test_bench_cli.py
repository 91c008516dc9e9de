"""The benchmark CLI (contres.bench) on a tiny case: JSON rows, finite numbers, memory accounting."""
import json
import math
import sys

import pytest

from contres import bench

TINY = ["--device", "cpu", "--batch", "2", "--channels", "4", "--size", "8", "--steps", "2", "--repeats", "1",
        "--warmup", "0", "--no-progress"]
ROW_KEYS = {"device", "case", "layer", "activation", "batch", "channels", "size", "steps", "controls", "dtype",
            "autocast", "method", "note"} | set(bench.ROW_NUMBERS)
MEASURED = ("fwd_ms", "fwd_bwd_ms", "speedup_fwd", "speedup_fwd_bwd", "act_mem_bytes", "mem_ratio",
            "max_diff_out", "max_diff_grad_w")


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    bench.main(TINY + ["--methods", "fused,eager", "--json", str(path)])
    printed = capsys.readouterr().out
    assert "fwd+bwd ms" in printed and "eager" in printed

    data = json.loads(path.read_text())
    env = data["environment"]
    for key in ("date", "torch_version", "devices", "build_info"):
        assert key in env
    rows = data["rows"]
    assert [(r["layer"], r["method"]) for r in rows] == [
        ("single", "fused"), ("single", "eager"), ("double_sym", "fused"), ("double_sym", "eager")]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert (r["batch"], r["channels"], r["size"], r["steps"]) == (2, 4, 8, 2)
        if r["method"] == "fused" and not bench._ext.has_kernels("cpu"):
            assert r["note"].startswith("skipped")
            continue
        assert r["note"] == ""
        for key in MEASURED:
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (r["method"], key, r[key])
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["act_mem_bytes"] > 0
        assert r["max_diff_out"] < 1e-4 and r["max_diff_grad_w"] < 1e-4
        if r["method"] == "eager":
            assert r["speedup_fwd"] == 1.0 and r["mem_ratio"] == 1.0 and r["max_diff_out"] == 0.0


def test_missing_torchdiffeq_is_left_out(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # `import torchdiffeq` raises ImportError
    rows = bench.main(TINY + ["--layer", "single", "--methods", "eager,torchdiffeq"])
    assert [r["method"] for r in rows] == ["eager"]
    assert "torchdiffeq" not in capsys.readouterr().out


def test_torchdiffeq_matches_eager():
    pytest.importorskip("torchdiffeq")
    rows = bench.main(TINY + ["--methods", "eager,torchdiffeq", "--controls", "1"])
    tdq = [r for r in rows if r["method"] == "torchdiffeq"]
    assert len(tdq) == 2 and all(r["note"] == "" for r in tdq)
    assert all(r["max_diff_out"] < 1e-5 and r["max_diff_grad_w"] < 1e-5 for r in tdq)


@pytest.mark.skipif(sys.platform != "linux", reason="profiler memory events checked on Linux")
def test_cpu_activation_memory_is_sensible():
    """Eager single/relu keeps 2 state-sized tensors per step (relu output, next state); the graph walk and the
    allocator agree there. The fused op keeps u_1..u_{N-1}, a 1-bit relu mask per step and the output."""
    case = bench.Case("cpu", "single", "relu", batch=4, channels=8, size=32, steps=4)  # state: 128 KiB
    inputs = bench.make_inputs(case)
    mem = bench.forward_memory(bench.forward_runner(bench.build_method("eager", case), inputs, case), inputs, "cpu")
    assert 1.99 <= mem["act"] / case.state_bytes / case.steps <= 2.01, mem
    assert abs(mem["alloc"] - mem["act"]) <= 0.01 * mem["act"] and mem["peak"] >= mem["alloc"], mem
    if bench._ext.has_kernels("cpu"):
        fn = bench.build_method("fused", case)
        for _ in range(2):  # the second forward may be served from contres's buffer cache: same answer
            mem = bench.forward_memory(bench.forward_runner(fn, inputs, case), inputs, "cpu")
            states = case.steps * case.state_bytes  # u_1 .. u_{N-1} and the output
            assert states + states // 32 <= mem["act"] <= 1.05 * states, mem


@pytest.mark.parametrize("extra,in_name", [(["--channels-last"], " CL"), (["--norm", "tv"], "/tv ")],
                         ids=["channels-last", "norm-tv"])
def test_cli_case_options(extra, in_name):
    """--channels-last gives every method channels_last inputs, --norm tv the normalised blocks; the case name
    says so and the fused rows stay within rounding of eager's."""
    rows = bench.main(TINY + ["--layer", "double_sym", "--methods", "fused,eager"] + extra)
    assert [r["method"] for r in rows] == ["fused", "eager"]
    assert in_name in rows[0]["case"]
    assert rows[0]["max_rel_diff_out"] < 1e-5 and rows[0]["max_rel_diff_grad_w"] < 1e-4
