"""One case: every method called once (checked against eager, its memory measured), then timed side by side."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import torch

from .. import ops
from . import memory, methods, timing
from .cases import Case, Inputs, make_inputs
from .report import MIB

# first_call_ms: the first forward+backward (torch.compile's compilation, cuDNN's plan choice; eager's is its second,
# after the reference run); cpu_pool_bytes: contres' CPU pool's cached bytes after the method's memory measurement;
# reversible_drift: ops.last_reversible_drift() after fused_reversible's first backward.
ROW_NUMBERS = ("fwd_ms", "fwd_bwd_ms", "speedup_fwd", "speedup_fwd_bwd", "act_mem_bytes", "act_mem_mib",
               "mem_ratio", "alloc_mem_bytes", "peak_mem_bytes", "max_diff_out", "max_diff_grad_w",
               "max_rel_diff_out", "max_rel_diff_grad_w", "l2_rel_diff_grad_w", "first_call_ms", "cpu_pool_bytes",
               "reversible_drift")


def make_row(case: Case, method: str, malloc: Optional[str] = None, **values) -> dict:
    row = {"device": case.device, "case": case.name, "layer": case.layer, "activation": case.activation,
           "batch": case.batch, "channels": case.channels, "size": case.size, "steps": case.steps,
           "controls": case.n_controls, "interp": case.interp, "integrator": case.integrator, "norm": case.norm,
           "channels_last": case.channels_last, "dtype": case.dtype, "autocast": case.autocast,
           "mkldnn_fp32_precision": case.mkldnn_fp32_precision, "malloc": malloc,
           "method": method, "path": None, "state_mib": case.state_bytes / MIB}
    row.update({k: None for k in ROW_NUMBERS})
    row["note"] = ""
    row.update(values)
    return row


def _short_error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}"


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def l2_rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||: stable where a few elements take the other side of a relu kink."""
    r = ref.detach().double()
    return ((a.detach().double() - r).norm() / r.norm().clamp_min(1e-30)).item()


@dataclasses.dataclass
class Prepared:
    """A method that ran once for this case: its row without times, and its runners (None: nothing to time)."""
    name: str
    row: dict
    forward: Optional[Callable] = None
    fwd_bwd: Optional[Callable] = None


def prepare_method(name: str, case: Case, inputs: Inputs, ref, malloc: Optional[str] = None) -> Optional[Prepared]:
    """First call (it compiles; differences from ref = eager's (out, grads)) and memory; None for a silent skip."""
    try:
        fn = methods.build_method(name, case)
    except methods.MethodSkipped as exc:
        return None if exc.silent else Prepared(name, make_row(case, name, malloc, note=f"skipped: {exc}"))
    forward = methods.forward_runner(fn, inputs, case)
    fwd_bwd = methods.fwd_bwd_runner(fn, inputs, case)
    try:
        start = time.perf_counter()
        out, grads = timing.synced(fwd_bwd, case.device)()  # also torch.compile's compilation
        first_ms = (time.perf_counter() - start) * 1e3
    except Exception as exc:  # noqa: BLE001  (compile failures, missing kernels, dtype gaps: report, go on)
        prefix = "compile failed" if name.startswith("compiled") else "failed"
        return Prepared(name, make_row(case, name, malloc, note=f"skipped: {prefix}: {_short_error(exc)}"))
    values = {"path": methods.path_of(name), "first_call_ms": first_ms, "note": methods.note(name, case)}
    if name == "fused_reversible":
        values["reversible_drift"] = ops.last_reversible_drift().item()
    ref_out, ref_grads = ref
    values["max_diff_out"] = max_abs_diff(out, ref_out)
    values["max_diff_grad_w"] = max_abs_diff(grads[1], ref_grads[1])
    values["max_rel_diff_out"] = values["max_diff_out"] / max(ref_out.detach().abs().max().item(), 1e-30)
    values["max_rel_diff_grad_w"] = values["max_diff_grad_w"] / max(ref_grads[1].abs().max().item(), 1e-30)
    values["l2_rel_diff_grad_w"] = l2_rel_diff(grads[1], ref_grads[1])
    del out, grads
    if name in methods.GRAPHED:
        values["note"] = "memory not measured: the CUDA graphs keep it in their own pool, out of the hooks' sight"
    else:
        mem = memory.forward_memory(forward, inputs, case.device)
        values.update(act_mem_bytes=mem["act"], act_mem_mib=mem["act"] / MIB, alloc_mem_bytes=mem["alloc"],
                      peak_mem_bytes=mem["peak"])
    if case.device == "cpu":
        values["cpu_pool_bytes"] = (memory.cpu_pool_stats() or {}).get("cached_bytes")
    return Prepared(name, make_row(case, name, malloc, **values), forward, fwd_bwd)


def add_ratios(rows: list) -> None:
    """Speed-ups (eager time / method time) and memory ratios (method / eager) within each case and allocator."""
    def key(r):
        return r["device"], r["case"], r.get("malloc")
    eager = {key(r): r for r in rows if r["method"] == "eager" and r["fwd_ms"] is not None}
    for r in rows:
        e = eager.get(key(r))
        if e is None or r["fwd_ms"] is None:
            continue
        r["speedup_fwd"] = e["fwd_ms"] / r["fwd_ms"]
        r["speedup_fwd_bwd"] = e["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        has_mem = r["act_mem_bytes"] is not None and e["act_mem_bytes"]
        r["mem_ratio"] = r["act_mem_bytes"] / e["act_mem_bytes"] if has_mem else None


def bench_case(case: Case, names, repeats: int, warmup: int, max_s: Optional[float] = None,
               rounds: int = timing.ROUNDS, malloc: Optional[str] = None, progress=None) -> list:
    """All methods on one case; eager runs once first to give the reference output and gradients."""
    methods.reset_compiled()
    inputs = make_inputs(case)
    ref = methods.fwd_bwd_runner(methods.build_method("eager", case), inputs, case)()
    ref = (ref[0].detach(), tuple(g.detach() for g in ref[1]))
    prepared = []
    for name in names:
        if progress is not None:
            progress.set_postfix_str(f"{case.device} {case.name} {name}: first call", refresh=True)
        p = prepare_method(name, case, inputs, ref, malloc)
        if p is not None:
            prepared.append(p)
    if progress is not None:
        progress.set_postfix_str(f"{case.device} {case.name}: timing {rounds} rounds", refresh=True)
    runnable = [p for p in prepared if p.forward is not None]
    medians = timing.time_interleaved([(p.forward, p.fwd_bwd) for p in runnable], case.device, repeats, warmup,
                                      max_s, rounds)
    for p, times in zip(runnable, medians):
        p.row.update(times)
    rows = [p.row for p in prepared]
    add_ratios(rows)
    return rows
