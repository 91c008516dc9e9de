"""Support and speed table of the fused cuDNN step graphs (csrc/cuda/cudnn_step) on this GPU.

Per graph kind, precision, shape and activation: whether cuDNN builds it, the plan (engine) it chose, the seconds
its first build took (NVRTC included; builds run in --jobs threads at once, so under load), and the time of one
fused call against the unfused ATen equivalent (the convolution, then the epilogue as eager ATen ops), by CUDA
events. The wgrad rows compare cuDNN frontend's weight gradient with ATen's convolution_backward. Prints a table
and writes every row to the JSON file given. About a minute on an H200 with the defaults.

    python scripts/cudnn_fusion_table.py OUT.json [--precisions tf32,bf16,fp16,fp32] [--jobs 8] [--iters 20]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import contres

LEAKY_SLOPE = 0.01
PRECISIONS = {"tf32": (torch.float32, True), "fp32": (torch.float32, False), "bf16": (torch.bfloat16, True),
              "fp16": (torch.float16, True)}
SHAPES = [(B, C, 32, 32) for B in (32, 128) for C in (16, 32, 64, 128)] + [(32, 16, 28, 28)]
H = 0.125
# (kind, activation, gate kind, with the bias sum). relu keeps a mask in the single layer, tanh a = act(z).
ROWS = [("fwd_single", "relu", "mask", False), ("fwd_single", "tanh", "value", False),
        ("dgrad_gate", "relu", "mask", True), ("dgrad_gate", "tanh", "value", True),
        ("conv_bias_act", "relu", "none", False), ("conv_bias_act", "tanh", "none", False),
        ("conv_gate", "tanh", "value", True), ("dgrad_add", "-", "none", False), ("wgrad", "-", "none", False)]


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def act_fn(name):
    return {"relu": torch.relu, "tanh": torch.tanh, "leaky_relu": lambda x: F.leaky_relu(x, LEAKY_SLOPE),
            "sigmoid": torch.sigmoid, "identity": lambda x: x}[name]


def dact(name, gate):
    if name == "relu":
        return gate  # mask bytes 0/1
    a = gate
    return 1 - a * a if name == "tanh" else a * (1 - a)


class Case:
    """One row: its tensors (alloc / free: all rows at once would not fit) and the fused and unfused calls."""

    def __init__(self, kind, act, gate, bias, prec, shape):
        self.kind, self.act, self.gate, self.bias, self.prec, self.shape = kind, act, gate, bias, prec, shape
        self.tf32 = PRECISIONS[prec][1]

    def free(self):
        for name in ("u", "v", "K", "b", "out", "out2", "gate_t", "mask_out", "bias_out", "dK"):
            setattr(self, name, None)

    def alloc(self):
        dtype = PRECISIONS[self.prec][0]
        gate, act = self.gate, self.act
        B, C, Hh, W = self.shape
        k = 3
        self.pad = k // 2
        self.u = cl(torch.randn(B, C, Hh, W, device="cuda").to(dtype))
        self.v = cl(torch.randn(B, C, Hh, W, device="cuda").to(dtype))
        self.K = cl((torch.randn(C, C, k, k, device="cuda") / math.sqrt(C * k * k)).to(dtype))
        self.b = (0.3 * torch.randn(C, device="cuda")).to(dtype)
        self.out = torch.empty_like(self.u)
        self.out2 = torch.empty_like(self.u)
        z = torch.randn(B, C, Hh, W, device="cuda")
        if gate == "none":
            self.gate_t = None
        else:
            self.gate_t = cl((z > 0).to(torch.uint8) if gate == "mask" else act_fn(act)(z).to(dtype))
        self.mask_out = torch.empty_like(self.u, dtype=torch.uint8)
        self.bias_out = torch.empty(C, device="cuda") if self.bias else None
        self.dK = cl(torch.empty(C, C, k, k, device="cuda"))
        return self

    def fused(self):
        C_ = contres._C
        if self.kind == "fwd_single":
            gate_out = self.mask_out if self.gate == "mask" else self.out2
            return C_._cudnn_forward_single(self.u, self.K, self.b, H, self.act, self.gate, self.out, gate_out)
        if self.kind == "conv_bias_act":
            return C_._cudnn_conv_bias_act(self.u, self.K, self.b, self.act, self.out)
        if self.kind == "dgrad_gate":
            return C_._cudnn_dgrad_gate(self.v, self.K, self.u, self.gate_t, self.act, self.gate, H, self.out,
                                        self.out2, self.bias_out)
        if self.kind == "conv_gate":
            return C_._cudnn_conv_gate(self.v, self.K, self.gate_t, self.act, self.gate, -H, self.out, self.bias_out)
        if self.kind == "dgrad_add":
            return C_._cudnn_dgrad_add(self.v, self.K, self.u, self.out, 1.0)
        return C_._cudnn_wgrad(self.u, self.v, self.dK)

    def unfused(self):
        """The same result from ATen: cuDNN's convolution, then the epilogue as eager ops."""
        p = self.pad
        if self.kind == "fwd_single":
            z = F.conv2d(self.u, self.K, self.b, padding=p)
            a = act_fn(self.act)(z)
            torch.add(self.u, a, alpha=H, out=self.out)
            if self.gate == "mask":
                torch.gt(z, 0, out=self.mask_out)
            else:
                self.out2.copy_(a)
        elif self.kind == "conv_bias_act":
            self.out.copy_(act_fn(self.act)(F.conv2d(self.u, self.K, self.b, padding=p)))
        elif self.kind == "dgrad_gate":
            torch.add(self.u, F.conv_transpose2d(self.v, self.K, padding=p), out=self.out)
            torch.mul(self.out, dact(self.act, self.gate_t) * H, out=self.out2)
            if self.bias:
                torch.sum(self.out2, (0, 2, 3), dtype=torch.float32, out=self.bias_out)
        elif self.kind == "conv_gate":
            torch.mul(F.conv2d(self.v, self.K, padding=p), dact(self.act, self.gate_t) * -H, out=self.out)
            if self.bias:
                torch.sum(self.out, (0, 2, 3), dtype=torch.float32, out=self.bias_out)
        elif self.kind == "dgrad_add":
            torch.add(self.u, F.conv_transpose2d(self.v, self.K, padding=p), out=self.out)
        else:
            grads = torch.ops.aten.convolution_backward(self.v, self.u, self.K, None, [1, 1], [p, p], [1, 1], False,
                                                        [0, 0], 1, [False, True, False])
            self.dK.copy_(grads[1])
        return True


def cuda_us(fn, iters):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return 1000.0 * start.elapsed_time(end) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="where to write the rows")
    ap.add_argument("--precisions", default="tf32,bf16", help="of tf32, fp32, bf16, fp16")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="concurrent first builds")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not contres.build_info().get("cudnn_fusion"):
        sys.exit(f"needs a GPU and contres built with the fused cuDNN graphs: {contres.build_info()}")
    t0 = time.time()
    torch.manual_seed(0)
    cases = [Case(kind, act, gate, bias, prec, shape) for prec in args.precisions.split(",")
             for shape in SHAPES for kind, act, gate, bias in ROWS]

    def build(case):  # the first call builds the plan; each thread has its own stream and cuDNN handle
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            ok = case.alloc().fused()
        stream.synchronize()
        case.free()
        return ok

    supported = {}
    for prec in args.precisions.split(","):
        group = [c for c in cases if c.prec == prec]
        torch.backends.cudnn.allow_tf32 = PRECISIONS[prec][1]  # process-wide: one precision at a time
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for case, ok in zip(group, pool.map(build, group)):
                supported[id(case)] = ok
    torch.cuda.synchronize()
    t_build = time.time() - t0
    records = {r["key"]: r for r in contres._C._cudnn_fusion_built_graphs()}

    rows = []
    for case in cases:
        torch.backends.cudnn.allow_tf32 = case.tf32
        ok = supported[id(case)]
        rec = next((r for key, r in records.items() if key.endswith(key_suffix(case))), None)
        case.alloc()
        t_fused = cuda_us(case.fused, args.iters) if ok else None
        t_aten = cuda_us(case.unfused, args.iters)
        case.free()
        rows.append(dict(kind=case.kind, act=case.act, gate=case.gate, bias_grad=case.bias, precision=case.prec,
                         shape=list(case.shape), supported=bool(ok), plan=rec["plan"] if rec else None,
                         build_s=rec["build_s"] if rec else None, fused_us=t_fused, aten_us=t_aten,
                         key=rec["key"] if rec else None))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
          f"first builds {t_build:.1f} s in {args.jobs} threads")
    head = f"{'kind':<14}{'act':<6}{'gate':<6}{'prec':<5}{'shape':<18}{'plan':<26}{'build s':>8}" \
           f"{'fused us':>10}{'ATen us':>10}{'ATen/fused':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "B{}C{} {}x{}".format(*r["shape"])
        plan = (r["plan"] or "-")[:25]
        fused = f"{r['fused_us']:.1f}" if r["fused_us"] else "-"
        ratio = f"{r['aten_us'] / r['fused_us']:.2f}" if r["fused_us"] else "-"
        build_s = f"{r['build_s']:.2f}" if r["build_s"] is not None else "-"
        print(f"{r['kind']:<14}{r['act']:<6}{r['gate']:<6}{r['precision']:<5}{shape:<18}{plan:<26}{build_s:>8}"
              f"{fused:>10}{r['aten_us']:>10.1f}{ratio:>11}")
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                build_info=contres.build_info(), jobs=args.jobs, iters=args.iters, first_builds_s=t_build,
                total_s=time.time() - t0)
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"{len(rows)} rows in {time.time() - t0:.1f} s -> {args.json}")


def key_suffix(case):
    """The end of describe(spec) that identifies a case among the built graphs (see graph_spec.cpp)."""
    return contres._C._cudnn_fusion_describe(spec_of(case))


def spec_of(case):
    B, C, Hh, W = case.shape
    dtype, tf32 = PRECISIONS[case.prec]
    spec = dict(kind=case.kind, dtype=dtype, B=B, C=C, H=Hh, W=W, k=3, tf32=tf32,
                deterministic=torch.are_deterministic_algorithms_enabled())
    if case.kind == "fwd_single":
        spec.update(act=case.act, gate=case.gate, gate_out=True, scalar=H)
    elif case.kind == "conv_bias_act":
        spec.update(act=case.act)
    elif case.kind == "dgrad_gate":
        spec.update(act=case.act, gate=case.gate, bias_out=case.bias, scalar=H)
    elif case.kind == "conv_gate":
        spec.update(act=case.act, gate=case.gate, bias_out=case.bias, scalar=-H)
    elif case.kind == "dgrad_add":
        spec.update(scalar=1.0)
    else:
        spec.update(out_dtype=torch.float32, out_channels_last=True)
    return spec


if __name__ == "__main__":
    main()
