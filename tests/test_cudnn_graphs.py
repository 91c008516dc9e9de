"""CPU-side check of the fused cuDNN step graphs (csrc/cuda/cudnn_step), without a GPU.

Every graph the module builds for a layer is constructed, validated and lowered to a cuDNN operation graph. For the
H200 (tests/data/h200_cudnn_device_properties.json, a serialized cuDNN device-property descriptor) cuDNN's
heuristics must then offer engines and check_support must pass, and for a smaller set the first plan must compile
with NVRTC, failing at most when cuDNN loads the compiled module. Heuristics and builds need a CUDA driver library
to load; a stub whose every call fails (tests/cuda_stub/libcuda_stub.c, compiled here with the C compiler) is
enough, so that part runs in a subprocess with the stub first on LD_LIBRARY_PATH (this file is also its runner).

Skipped unless contres was built with the fused graphs (build_info()["cudnn_fusion"]); CI's CUDA build runs it.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import contres
from contres._subprocess import child_env, python_command

HERE = Path(__file__).resolve().parent
PROPS_PATH = HERE / "data" / "h200_cudnn_device_properties.json"
STUB_SOURCE = HERE / "cuda_stub" / "libcuda_stub.c"

H = 0.125  # the step of the graphs below; any value works, it is baked into each graph as a constant

# (activation, gate kinds it can use). identity: none (single layer) or value (double_sym keeps a = act(z) = z).
ACT_GATES = [("identity", "none"), ("identity", "value"), ("relu", "mask"), ("relu", "value"),
             ("leaky_relu", "mask"), ("leaky_relu", "value"), ("tanh", "value"), ("sigmoid", "value")]
# float32 twice: on TF32 tensor cores (torch's default for cuDNN convolutions) and in true float32.
DTYPES = [("float32", True), ("float32", False), ("bfloat16", True), ("float16", True)]
SHAPES = [(128, 64, 32, 32, 3), (32, 16, 28, 28, 1), (32, 16, 28, 28, 5), (2, 8, 5, 7, 3)]  # B, C, H, W, k


def layer_graphs(use: str, act: str, gate: str, dtype: str, tf32: bool, shape) -> list[dict]:
    """The graphs a step of `use` runs with this activation and gate kind (see fused_step.h)."""
    B, C, Hh, W, k = shape
    base = dict(dtype=dtype, B=B, C=C, H=Hh, W=W, k=k, tf32=tf32)
    # In true float32 no engine fuses the bias-gradient reduction (test_true_float32_has_no_fused_bias_sum).
    bias = not (dtype == "float32" and not tf32)
    if use == "single":
        return [
            dict(base, kind="fwd_single", act=act, gate=gate, gate_out=gate != "none", scalar=H),
            dict(base, kind="dgrad_gate", act=act, gate=gate, bias_out=bias, scalar=H),  # g of the step before
            dict(base, kind="dgrad_add"),  # dL/dx after the last step
            dict(base, kind="wgrad"),  # dK in float32, KRSC
        ]
    return [  # double_sym
        dict(base, kind="conv_bias_act", act=act),  # a = act(conv(u) + b)
        dict(base, kind="dgrad_add", scalar=-H),  # u_next = u - h convT(a)
        dict(base, kind="conv_axpy", scalar=-H),  # the same with a flipped kernel
        dict(base, kind="conv_gate", act=act, gate=gate, bias_out=bias, scalar=-H),  # g = -h act' conv(lam)
        dict(base, kind="dgrad_add"),  # lam + convT(g)
        dict(base, kind="wgrad", out_dtype=dtype, out_channels_last=False),  # dK in the state dtype, KCRS
    ]


def mask_in_true_float32(spec: dict) -> bool:
    """Without TF32 the fused graphs' only engine is runtime fusion's non-tensor-core eng8 (cuDNN 9.24 on Hopper),
    which fails to compile graphs with UINT8 (mask) operands: run_* returns false for them."""
    reads_or_writes_mask = spec.get("gate") == "mask" and (spec.get("gate_out") or spec["kind"] != "fwd_single")
    return spec["dtype"] == "float32" and not spec["tf32"] and reads_or_writes_mask


def case_id(use, act, gate, dtype, tf32, shape):
    prec = ("tf32" if tf32 else "fp32") if dtype == "float32" else dtype
    return f"{use}-{act}-{gate}-{prec}-B{shape[0]}C{shape[1]}{shape[2]}x{shape[3]}k{shape[4]}"


# The single layer keeps a mask (relu, leaky_relu), a = act(z) (tanh, sigmoid) or nothing (identity), and can
# keep a for any activation; double_sym always keeps a.
CASES = [(use, act, gate, dtype, tf32, shape)
         for use in ("single", "double_sym")
         for act, gate in ACT_GATES if use == "single" or gate == "value"
         for (dtype, tf32), shape in itertools.product(DTYPES, SHAPES)]
# NVRTC builds: one shape, relu (mask) and tanh for the single layer, leaky_relu for double_sym.
BUILD_CASES = [(use, act, gate, dtype, tf32, (32, 16, 28, 28, 3))
               for use, act, gate in (("single", "relu", "mask"), ("single", "tanh", "value"),
                                      ("double_sym", "leaky_relu", "value"))
               for dtype, tf32 in DTYPES]


# The gate graphs with the bias-gradient sum, on TF32 and in true float32.
BIAS_SUM_GRAPHS = [dict(kind=kind, dtype="float32", tf32=tf32, B=32, C=16, H=28, W=28, k=3, act="tanh", gate="value",
                        bias_out=True, scalar=H) for kind in ("dgrad_gate", "conv_gate") for tf32 in (True, False)]


def key_of(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def to_torch(spec: dict) -> dict:
    out = dict(spec)
    for name in ("dtype", "out_dtype"):
        if name in out:
            out[name] = getattr(torch, out[name])
    return out


def load_props() -> tuple[str, int]:
    text = PROPS_PATH.read_text()
    return text, json.loads(text)["deviceVer"] // 10


# ---- the runner (executed in a subprocess with the stub driver) -------------------------------------------------

def run_checks(request: dict) -> dict:
    """Heuristics for request["specs"], builds for request["build"]; returns results by key_of(spec)."""
    import ctypes

    from contres import _C

    props, sm = load_props()
    stub = ctypes.CDLL("libcuda.so.1")  # the driver cuDNN loaded: the stub, whose counter tells module loads
    results = {}
    specs = request["specs"]
    for r, spec in zip(_C._cudnn_fusion_check([to_torch(s) for s in specs], props, sm, False), specs):
        results[key_of(spec)] = r
    for spec in request["build"]:
        before = stub.contres_stub_module_loads()
        r = _C._cudnn_fusion_check([to_torch(spec)], props, sm, True)[0]
        r["module_loads"] = stub.contres_stub_module_loads() - before
        results["build:" + key_of(spec)] = r
    return results


# ---- tests -------------------------------------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(not contres.build_info().get("cudnn_fusion"),
                                reason="contres built without the fused cuDNN graphs")


def check(specs, build=False, with_props=True):
    from contres import _C

    props, sm = load_props()
    return _C._cudnn_fusion_check([to_torch(s) for s in specs], props if with_props else "", sm, build)


@pytest.fixture(scope="module")
def stub_dir(tmp_path_factory):
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler for the stub libcuda.so.1")
    out = tmp_path_factory.mktemp("cuda_stub")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out / "libcuda.so.1"), str(STUB_SOURCE)],
                   check=True)
    return out


@pytest.fixture(scope="module")
def checked(stub_dir, tmp_path_factory):
    """Results of the heuristics (all CASES) and builds (BUILD_CASES), from one subprocess with the stub."""
    specs = {key_of(s): s for case in CASES for s in layer_graphs(*case)}
    specs.update({key_of(s): s for s in BIAS_SUM_GRAPHS})
    build = {key_of(s): s for case in BUILD_CASES for s in layer_graphs(*case)}
    work = tmp_path_factory.mktemp("cudnn_check")
    (work / "request.json").write_text(json.dumps({"specs": list(specs.values()), "build": list(build.values())}))
    # The same contres this process imported, wherever it lives (installed, or an in-place build), checked by the
    # child before it starts.
    env = child_env()
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(stub_dir)] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    proc = subprocess.run(python_command(__file__, str(work / "request.json"), str(work / "result.json")),
                          env=env, cwd=str(work), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"check subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((work / "result.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[case_id(*c) for c in CASES])
def test_heuristics_offer_engines_for_h200(checked, case):
    for spec in layer_graphs(*case):
        r = checked[key_of(spec)]
        assert r["validated"] and r["lowered"], f"{r['key']}: {r['error']}"
        assert r["engines"], f"{r['key']}: heuristics offered no engine: {r['error']}"
        assert r["supported"] and not r["error"], f"{r['key']}: {r['error']}"


@pytest.mark.parametrize("case", BUILD_CASES, ids=[case_id(*c) for c in BUILD_CASES])
def test_first_plan_compiles_for_h200(checked, case):
    """NVRTC compiles the first supported plan; with the stub driver the build may fail only when loading it
    (precompiled engines, such as some weight-gradient ones, build without loading anything)."""
    for spec in layer_graphs(*case):
        r = checked["build:" + key_of(spec)]
        assert r["built_plan"], f"{r['key']}: nothing built: {r['error']}"
        if mask_in_true_float32(spec):
            assert r["build_error"] and r["module_loads"] == 0, \
                f"{r['key']}: {r['built_plan']} now compiles a mask graph in true float32: update mask_in_true_float32"
            continue
        assert not r["build_error"] or r["module_loads"] > 0, \
            f"{r['key']}: the build of {r['built_plan']} failed before loading a module: {r['build_error']}"


def test_true_float32_has_no_fused_bias_sum(checked):
    """Known limit (cuDNN 9.24, Hopper): no engine without TF32 fuses the bias-gradient reduction, so in true
    float32 the driver asks for the gate graphs without bias_out and sums the bias itself."""
    for spec in BIAS_SUM_GRAPHS:
        r = checked[key_of(spec)]
        assert r["lowered"] and r["engines"], r
        assert r["supported"] == spec["tf32"], \
            f"{r['key']}: supported={r['supported']}; if true float32 now fuses it, let layer_graphs ask for it"


def test_graphs_validate_and_lower_without_a_driver():
    """Construction, validation and lowering need no driver (no stub in this process)."""
    specs = [s for case in CASES[:: max(1, len(CASES) // 40)] for s in layer_graphs(*case)]
    for r in check(specs):
        assert r["validated"] and r["lowered"], f"{r['key']}: {r['error']}"


@pytest.mark.parametrize("bad,why", [
    (dict(dtype="float64"), "dtype"),
    (dict(dtype="bfloat16", C=12), "multiple of 8"),
    (dict(dtype="float32", C=6), "multiple of 4"),
    (dict(k=4), "odd"),
    (dict(act="tanh", gate="mask"), "does not fit"),
    (dict(act="relu", gate="none"), "does not fit"),
    (dict(kind="wgrad", dtype="bfloat16", out_dtype="float16"), "float32 or the state dtype"),
])
def test_specs_cuDNN_cannot_serve_are_reported(bad, why):
    good = dict(kind="dgrad_gate", dtype="float32", B=2, C=8, H=5, W=7, k=3, act="relu", gate="mask")
    r_bad, r_good = check([dict(good, **bad), good], with_props=False)  # validation only: no driver here
    assert why in r_bad["error"] and not r_bad["validated"], r_bad
    assert not r_good["error"] and r_good["validated"], r_good


def test_graph_keys_are_exact():
    """Scalars are baked into the graphs, so the cache key must tell every bit apart."""
    from contres import _C

    base = dict(kind="fwd_single", dtype=torch.float32, B=2, C=8, H=5, W=7, act="relu", gate="mask", gate_out=True)
    keys = {_C._cudnn_fusion_describe(dict(base, **extra)) for extra in (
        dict(scalar=0.1), dict(scalar=math.nextafter(0.1, 1.0)), dict(scalar=0.1, tf32=False),
        dict(scalar=0.1, deterministic=True), dict(scalar=0.1, gate="value"), dict(scalar=0.1, k=5))}
    assert len(keys) == 6, keys
    with pytest.raises(ValueError):
        _C._cudnn_fusion_describe(dict(base, kind="conv_transpose"))


def test_stub_is_needed_for_heuristics_here():
    """Without a driver the runtime-fusion engines are 'not supported', which is why the stub exists. (On a
    machine with a real driver this process has one, and the heuristics answer.)"""
    if torch.cuda.is_available():
        pytest.skip("a real CUDA driver is present")
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a libcuda.so.1 is loadable in this process")
    except OSError:
        pass
    spec = dict(kind="fwd_single", dtype="bfloat16", B=2, C=8, H=5, W=7, act="relu", gate="mask", gate_out=True,
                scalar=H)
    r = check([spec])[0]
    assert r["lowered"] and not r["supported"], r


if __name__ == "__main__":  # the runner of `checked`: python test_cudnn_graphs.py REQUEST.json RESULT.json
    Path(sys.argv[2]).write_text(json.dumps(run_checks(json.loads(Path(sys.argv[1]).read_text()))))
