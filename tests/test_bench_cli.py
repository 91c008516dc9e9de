"""The benchmark (contres.bench) on tiny cases: the CLI and its JSON, the integrators, the autocast baselines, the
allocator settings, the path column, the picture, and the memory figure against hand-counted bytes."""
import json
import math
import sys

import pytest
import torch

import contres
from contres import _ext, bench
from contres.bench import memory

TINY = ["--device", "cpu", "--batch", "2", "--channels", "4", "--size", "8", "--steps", "2", "--repeats", "1",
        "--warmup", "0", "--no-progress"]
ROW_KEYS = {"device", "case", "layer", "activation", "batch", "channels", "size", "steps", "controls", "interp",
            "integrator", "dtype", "autocast", "mkldnn_fp32_precision", "malloc", "method", "path", "note"} | \
    set(bench.ROW_NUMBERS)
MEASURED = ("fwd_ms", "fwd_bwd_ms", "speedup_fwd", "speedup_fwd_bwd", "act_mem_bytes", "mem_ratio",
            "max_diff_out", "max_diff_grad_w")
needs_cpu_kernels = pytest.mark.skipif(not _ext.has_kernels("cpu"), reason="no fused CPU kernels in this build")


def _finite(row):
    for key in MEASURED:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (row["method"], key, row[key])


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    bench.main(TINY + ["--methods", "fused,eager", "--json", str(path)])
    printed = capsys.readouterr().out
    assert "fwd+bwd ms" in printed and "eager" in printed and "path" in printed

    data = json.loads(path.read_text())
    env = data["environment"]
    for key in ("date", "torch_version", "devices", "build_info", "commit", "contres_version", "malloc", "cpu"):
        assert key in env
    assert isinstance(env["cpu"]["native_bf16"], bool) and env["cpu"]["model"]
    assert ("native bf16" in env["devices"]["cpu"]) and ("native bf16" in printed)  # the CPU's bf16 support
    if _ext.available():
        assert set(env["cpu_pool"]["end"]) >= {"cached_bytes", "limit_bytes", "hits", "misses", "evictions"}
    rows = data["rows"]
    assert [(r["layer"], r["method"]) for r in rows] == [
        ("single", "fused"), ("single", "eager"), ("double_sym", "fused"), ("double_sym", "eager")]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert (r["batch"], r["channels"], r["size"], r["steps"], r["integrator"]) == (2, 4, 8, 2, "euler")
        if r["method"] == "fused" and not _ext.has_kernels("cpu"):
            assert r["note"].startswith("skipped")
            continue
        assert r["note"] == ""
        _finite(r)
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["act_mem_bytes"] > 0
        assert r["max_diff_out"] < 1e-4 and r["max_diff_grad_w"] < 1e-4
        if r["method"] == "eager":
            assert r["speedup_fwd"] == 1.0 and r["mem_ratio"] == 1.0 and r["max_diff_out"] == 0.0
            assert r["path"] == {"forward": "eager", "backward": "eager"}


@needs_cpu_kernels
def test_integrator_rows():
    """--method all: rk4 and leapfrog cases (named so) with finite numbers; leapfrog's reversible memory does not
    grow with the steps (below eager's); torchdiffeq's rk4 is flagged as the 3/8 rule, and it has no leapfrog."""
    rows = bench.main(TINY + ["--steps", "6", "--layer", "single", "--method", "all",
                              "--methods", "fused,fused_reversible,eager,torchdiffeq"])
    by = {(r["integrator"], r["method"]): r for r in rows}
    assert {i for i, _ in by} == {"euler", "rk4", "leapfrog"}
    assert ("euler", "fused_reversible") not in by and ("leapfrog", "torchdiffeq") not in by
    for (integrator, method), r in by.items():
        assert (integrator in r["case"].split()) == (integrator != "euler")
        _finite(r)
    reversible, eager = by[("leapfrog", "fused_reversible")], by[("leapfrog", "eager")]
    assert reversible["act_mem_bytes"] < 0.5 * eager["act_mem_bytes"]
    assert 0 <= reversible["reversible_drift"] < 1e-4
    assert by[("leapfrog", "fused")]["max_rel_diff_out"] < 1e-5
    if ("rk4", "torchdiffeq") in by:
        assert "3/8" in by[("rk4", "torchdiffeq")]["note"]


def test_torchdiffeq_matches_eager():
    """torchdiffeq's Euler on the reference's right-hand side, with the controls interpolated at each t as the
    block does (linear, fewer controls than steps), gives eager's numbers."""
    pytest.importorskip("torchdiffeq")
    rows = bench.main(TINY + ["--methods", "eager,torchdiffeq", "--steps", "4", "--controls", "3",
                              "--interp", "linear"])
    tdq = [r for r in rows if r["method"] == "torchdiffeq"]
    assert len(tdq) == 2 and all(r["note"] == "" for r in tdq)
    assert all(r["max_rel_diff_out"] < 1e-5 and r["max_rel_diff_grad_w"] < 1e-5 for r in tdq)


def test_missing_torchdiffeq_is_left_out(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # `import torchdiffeq` raises ImportError
    rows = bench.main(TINY + ["--layer", "single", "--methods", "eager,torchdiffeq"])
    assert [r["method"] for r in rows] == ["eager"]
    assert "torchdiffeq" not in capsys.readouterr().out


def test_autocast_baselines():
    """Under --autocast, eager is the reference under plain torch.autocast (per-op casts: the state stays float32),
    and so is fused; eager_blockcast and fused_reduced cast the whole block; ratios are against eager."""
    methods = "fused,fused_reduced,eager,eager_blockcast"
    rows = bench.main(TINY + ["--layer", "single", "--autocast", "bf16", "--methods", methods])
    by = {r["method"]: r for r in rows}
    assert set(by) == set(methods.split(",")) and "autocast-bf16" in by["eager"]["case"]
    for r in by.values():
        if not r["method"].startswith("fused") or _ext.has_kernels("cpu"):
            _finite(r)
    assert by["eager"]["speedup_fwd"] == 1.0 and by["eager_blockcast"]["max_diff_out"] > 0
    case = bench.Case("cpu", "single", "relu", 2, 4, 8, 2, autocast="bfloat16")
    inputs = bench.make_inputs(case)
    names = ("eager", "eager_blockcast") + (("fused", "fused_reduced") if _ext.has_kernels("cpu") else ())
    dtypes = {m: bench.forward_runner(bench.build_method(m, case), inputs, case)().dtype for m in names}
    assert dtypes == {m: torch.bfloat16 if m in ("eager_blockcast", "fused_reduced") else torch.float32
                      for m in names}


def test_default_cpu_cases_add_bf16_where_native():
    """The default CPU run adds both layers under bf16 autocast and with mkldnn's bf16 fp32 precision on a CPU
    with native bf16, and neither elsewhere."""
    args = bench.parse_args([])
    ported = ["torchdiffeq/relu/group B128 C64 7x7 N8 M1 f32", "torchdiffeq/relu/group B32 C64 16x16 N8 M1 f32",
              "seed_double_sym/relu/tv rk4 B32 C32 32x32 N4 M2-linear f32"]
    plain = bench.make_cases("cpu", args, native_bf16=False)
    assert [c.name for c in plain] == ["single/relu B32 C32 32x32 N8 f32", "double_sym/tanh B32 C32 32x32 N8 f32",
                                       *ported]
    extra = [c.name for c in bench.make_cases("cpu", args, native_bf16=True)[2:]]
    assert extra == ["single/relu B32 C32 32x32 N8 f32 autocast-bf16", "double_sym/tanh B32 C32 32x32 N8 f32 "
                     "autocast-bf16", "single/relu B32 C32 32x32 N8 f32 mkldnn-bf16",
                     "double_sym/tanh B32 C32 32x32 N8 f32 mkldnn-bf16", *ported]


@pytest.mark.parametrize("layer", ["torchdiffeq", "seed_double_sym"])
def test_ported_right_hand_side_rows(layer):
    """The ported right-hand sides run every method on their own parameters, eager (their model's own ops) the
    baseline, the fused block and odeint agreeing with it."""
    rows = bench.main(TINY + ["--layer", layer, "--controls", "1", "--methods", "eager,fused,torchdiffeq"])
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"eager", "fused", "torchdiffeq"}, [r["note"] for r in rows]
    for method in ("fused", "torchdiffeq"):
        assert by_method[method]["max_rel_diff_out"] < 1e-4 and by_method[method]["max_rel_diff_grad_w"] < 1e-3
    assert by_method["fused"]["mem_ratio"] < 1


def test_mkldnn_fp32_precision_case():
    """--mkldnn-fp32-precision bf16: the case runs forward and backward under the setting (named in the case and
    the row) and restores it afterwards."""
    before = torch.backends.mkldnn.conv.fp32_precision
    seen = []
    case = bench.Case("cpu", "single", "relu", 2, 4, 8, 2, mkldnn_fp32_precision="bf16")
    inputs = bench.make_inputs(case)
    run = bench.fwd_bwd_runner(lambda *t: seen.append(torch.backends.mkldnn.conv.fp32_precision) or
                               bench.build_method("eager", case)(*t), inputs, case)
    run()
    assert seen == ["bf16"] and torch.backends.mkldnn.conv.fp32_precision == before
    rows = bench.main(TINY + ["--layer", "single", "--methods", "eager", "--mkldnn-fp32-precision", "bf16"])
    assert rows[0]["case"].endswith("mkldnn-bf16") and rows[0]["mkldnn_fp32_precision"] == "bf16"
    with pytest.raises(SystemExit):
        bench.parse_args(["--autocast", "bf16", "--mkldnn-fp32-precision", "bf16"])


def test_malloc_settings():
    """--malloc both: the CPU cases under glibc's defaults and without page faults (a child process with the
    variables set, which labels its rows from its own environment)."""
    rows = bench.main(TINY + ["--layer", "single", "--methods", "eager", "--malloc", "both"])
    assert sorted(r["malloc"] for r in rows) == ["default", "no-page-faults"]
    for r in rows:
        _finite(r)


def test_path_column(monkeypatch, capsys):
    """Fused rows name the path contres.ops.last_paths() reports, when the build has that function."""
    if not _ext.has_kernels("cpu"):
        pytest.skip("no fused CPU kernels in this build")
    monkeypatch.setattr(contres.ops, "last_paths", lambda: {"forward": "fwd-kind", "backward": "bwd-kind"},
                        raising=False)
    rows = bench.main(TINY + ["--layer", "single", "--methods", "fused,eager"])
    assert rows[0]["path"] == {"forward": "fwd-kind", "backward": "bwd-kind"}
    assert "fwd-kind/bwd-kind" in capsys.readouterr().out
    monkeypatch.delattr(contres.ops, "last_paths")
    assert bench.main(TINY + ["--layer", "single", "--methods", "fused"])[0]["path"] is None


def test_plot(tmp_path):
    """--plot draws the run; contres.bench.plot redraws saved runs, those of the older benchmark included."""
    pytest.importorskip("matplotlib")
    from contres.bench import plot

    png, run = tmp_path / "run.png", tmp_path / "run.json"
    bench.main(TINY + ["--methods", "fused,eager", "--json", str(run), "--plot", str(png)])
    old = tmp_path / "old.json"  # the keys the first version of the benchmark wrote
    old.write_text(json.dumps({"environment": {"devices": {"cpu": "x"}}, "rows": [
        {"device": "cpu", "case": "single/relu B2 C4 8x8 N2 f32", "method": m, "speedup_fwd": s,
         "speedup_fwd_bwd": s, "mem_ratio": s} for m, s in (("fused", 1.2), ("eager", 1.0))]}))
    plot.main([str(run), str(tmp_path / "again.png"), str(old), str(tmp_path / "old.png")])
    for path in (png, tmp_path / "again.png", tmp_path / "old.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_saved_bytes_hand_counted():
    """The memory figure is what autograd saves plus the output, each storage once, the inputs left out."""
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    n = x.numel() * x.element_size()
    # mul saves x and w (inputs: not counted); sin saves its input, the product; the output is a new tensor
    assert memory.saved_bytes(lambda: torch.sin(x * w), (x, w))[0] == 2 * n
    # exp saves its own output: one storage, counted once
    assert memory.saved_bytes(lambda: torch.exp(x * w), (x, w))[0] == n
    # sin saves a view of the product: the whole storage it keeps alive counts
    assert memory.saved_bytes(lambda: torch.sin((x * w)[:, :2]), (x, w))[0] == n + 3 * 2 * x.element_size()


def test_block_memory():
    """Eager single/relu keeps 2 state-sized tensors per step (u_1..u_{N-1} for the convolutions, each relu output,
    the output); the fused op keeps u_1..u_{N-1}, the output and a 1-bit relu mask per step, also when its buffers
    come from contres' CPU pool (the second call)."""
    case = bench.Case("cpu", "single", "relu", batch=4, channels=8, size=32, steps=4)  # state: 128 KiB
    inputs = bench.make_inputs(case)
    mem = bench.forward_memory(bench.forward_runner(bench.build_method("eager", case), inputs, case), inputs, "cpu")
    assert mem["act"] == 2 * case.steps * case.state_bytes, mem
    if _ext.has_kernels("cpu"):
        fn = bench.build_method("fused", case)
        for _ in range(2):
            mem = bench.forward_memory(bench.forward_runner(fn, inputs, case), inputs, "cpu")
            states = case.steps * case.state_bytes
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

