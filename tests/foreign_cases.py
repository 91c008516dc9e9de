"""Tensors the low-level ops did not make, handed to them: each case says what the op must raise. Shared by
test_op_validation.py, which runs the whole list in a child process first (a crash there is reported by case name,
not as a dead test run) and then each case in-process with its error and the untouched inputs checked.

Run directly: python tests/foreign_cases.py DEVICE  -> one line per case, "ok NAME" or "raised NAME: TYPE: MSG".
"""
from __future__ import annotations

import math
import sys

import torch

B, C, H, W, N = 2, 3, 4, 5, 3
H_STEP = 0.25


def _inputs(device, dtype=torch.float64, B=B, C=C, H=H, W=W, rows=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(rows, C, C, 3, 3, generator=g, dtype=torch.float64) * 0.2
    b = torch.randn(rows, C, generator=g, dtype=torch.float64) * 0.2
    return tuple(t.to(device=device, dtype=dtype) for t in (x, w, b))


def _forward(x, w, b, config):
    return torch.ops.contres.ode_forward(x, w, b, H_STEP, *config)


RELU = ("single", "relu", 0, "none", "euler", "states")
TANH = ("single", "tanh", 0, "none", "euler", "states")
TV = ("single", "tanh", 0, "tv", "euler", "states")
CKPT2 = ("single", "relu", 2, "none", "euler", "states")
RK4 = ("single", "relu", 0, "none", "rk4", "states")
REV = ("single", "relu", 0, "none", "leapfrog", "reversible")
# A chain that keeps several slots: z1 and z2 (pre) and three group norms' statistics.
CHAIN = ("norm,act,conv,norm,act,conv,norm", "relu", 0, "group", "euler", "states")
CHAIN_OPTIONS = dict(norm_affine=True, time_channel=True, norm_groups=1)


def _chain_inputs(device, rows=N):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    shapes = [(C, C + 1, 3, 3), (C,), (C,), (C,), (C,), (C,), (C, C + 1, 3, 3), (C,), (C,), (C,)]
    params = [torch.randn(rows, *s, generator=g, dtype=torch.float64) * 0.2 for s in shapes]
    return x.to(device), [p.to(device) for p in params]


def cases(device):
    """name -> (args of ode_backward, expected exception type, regex of its message)"""
    x, w, b = _inputs(device)
    _, st, aux = _forward(x, w, b, RELU)
    mask = aux[0]  # the one kept slot of the single layer: relu's sign bits
    gy = torch.randn_like(x)
    ok = lambda **kw: (gy, x, w, b, kw.get("states", st), kw.get("aux", aux), H_STEP, *kw.get("config", RELU))  # noqa
    xb3, wb3, bb3 = _inputs(device, B=3)
    _, st_b3, aux_b3 = _forward(xb3, wb3, bb3, RELU)
    _, st_tanh, aux_tanh = _forward(x, w, b, TANH)
    _, st_tv, aux_tv = _forward(x, w, b, TV)
    _, st_ck, aux_ck = _forward(x, w, b, CKPT2)
    wr, br = torch.cat([w, w[:1]]).repeat(2, 1, 1, 1, 1)[:2 * N + 1], torch.cat([b, b]).repeat(2, 1)[:2 * N + 1]
    _, st_rk4, aux_rk4 = _forward(x, wr, br, RK4)
    xc, pc = _chain_inputs(device)
    _, st_c, aux_c = torch.ops.contres.ode_forward(xc, pc[0], pc[1], H_STEP, *CHAIN, params=pc[2:], **CHAIN_OPTIONS)
    gyc = torch.randn_like(xc)
    chain = lambda **kw: ((gyc, xc, pc[0], pc[1], kw.get("states", st_c), kw.get("aux", aux_c), H_STEP,  # noqa
                           *CHAIN), dict(CHAIN_OPTIONS, params=kw.get("params", pc[2:])))
    big = torch.zeros(st.shape[0], B, C, H, 2 * W, dtype=st.dtype, device=device)
    big[..., ::2] = st
    V, S, T_, D = ValueError, ValueError, TypeError, RuntimeError
    return {
        # states
        "states smaller batch": (ok(states=st[:, :1]), V, r"states must be .* sizes \(2, 2, 3, 4, 5\)"),
        "states larger batch": (ok(states=st_b3), V, r"states must be"),
        "states fewer channels": (ok(states=st[:, :, :2]), V, r"states must be"),
        "states NCHW-contiguous": (ok(states=st.contiguous()), S, r"states .* memory layout"),
        "states one too few": (ok(states=st[:1]), V, r"states must be .*2 states"),
        "states one too many": (ok(states=torch.cat([st, st[:1]])), V, r"states must be"),
        "states 4-D": (ok(states=st[0]), V, r"states must be"),
        "states float32": (ok(states=st.float()), T_, r"states must be .* dtype"),
        "states on meta": (ok(states=st.to("meta")), D, r"states must be on"),
        "states expanded (stride 0)": (ok(states=st[:1].expand(2, -1, -1, -1, -1)), S, r"memory layout"),
        "states strided slice": (ok(states=big[..., ::2]), S, r"memory layout"),
        "states empty": (ok(states=torch.empty(0, dtype=st.dtype, device=device)), V, r"states must be"),
        "states of checkpoint 2": (ok(states=st_ck), V, r"states must be"),
        "states of rk4": (ok(states=st_rk4), V, r"states must be"),
        "states and aux swapped": (ok(states=mask, aux=[st]), V, r"states must be"),
        # aux
        "mask truncated": (ok(aux=[mask[:, :-1]]), V, r"aux must be .* mask"),
        "mask one byte long": (ok(aux=[torch.cat([mask, mask[:, :1]], 1)]), V, r"aux must be"),
        "mask missing a step": (ok(aux=[mask[:2]]), V, r"aux must be"),
        "mask as int8": (ok(aux=[mask.to(torch.int8)]), T_, r"aux must be .* dtype"),
        "mask transposed": (ok(aux=[mask.t().contiguous().t()]), S, r"aux .* memory layout"),
        "mask empty": (ok(aux=aux_ck), V, r"aux must be"),
        "tanh values for relu": (ok(aux=aux_tanh), V, r"aux must be"),
        "mask for tanh": (ok(states=st_tanh, aux=aux, config=TANH), V, r"aux must be .* value"),
        "tv z for tanh": (ok(states=st_tanh, aux=aux_tv, config=TANH), S, r"aux must be"),
        "tanh values for tv": (ok(states=st_tv, aux=aux_tanh, config=TV), S, r"aux must be .* pre"),
        "aux on meta": (ok(aux=[mask.to("meta")]), D, r"aux must be on"),
        "aux with a tensor too many": (ok(aux=[mask, mask]), V, r"aux must be .* 1 tensors, got 2"),
        "aux as no tensors": (ok(aux=[]), V, r"aux must be .* 1 tensors, got 0"),
        "aux of rk4": (ok(aux=aux_rk4), V, r"aux must be"),
        "checkpoint 2 states with checkpoint 0": (ok(states=st_ck, aux=aux_ck), V, r"states must be"),
        "checkpoint 0 tensors with checkpoint 2": (ok(config=CKPT2), V, r"states must be"),
        "reversible with the euler tensors": (ok(config=REV), V, r"aux must be"),  # 2 states either way
        # grad_out
        "grad_out other batch": ((gy[:1], x, w, b, st, aux, H_STEP, *RELU), V, r"grad_out must have x's shape"),
        "grad_out 3-D": ((gy[0], x, w, b, st, aux, H_STEP, *RELU), V, r"grad_out must have x's shape"),
        "grad_out integer": ((gy.long(), x, w, b, st, aux, H_STEP, *RELU), T_, r"grad_out must be a floating"),
        "grad_out on meta": ((gy.to("meta"), x, w, b, st, aux, H_STEP, *RELU), D, r"grad_out must be on"),
        # the other arguments disagreeing with the saved tensors
        "x of another batch": ((torch.randn_like(xb3), xb3, w, b, st, aux, H_STEP, *RELU), V, r"states must be"),
        "weight of fewer steps": ((gy, x, w[:2], b[:2], st, aux, H_STEP, *RELU), V, r"states must be"),
        "h nan": ((gy, x, w, b, st, aux, math.nan, *RELU), V, r"h must be a positive finite step"),
        "h negative": ((gy, x, w, b, st, aux, -0.5, *RELU), V, r"h must be"),
        "unknown activation": ((gy, x, w, b, st, aux, H_STEP, "single", "gelu", 0), V, r"activation must be one of"),
        "negative checkpoint": ((gy, x, w, b, st, aux, H_STEP, "single", "relu", -1), V, r"checkpoint must be >= 0"),
        # a chain's several kept slots and its params
        "chain aux slots swapped": (chain(aux=[aux_c[1], aux_c[0], *aux_c[2:]]), S, r"aux\[0\] must be"),
        "chain aux missing its last slot": (chain(aux=aux_c[:-1]), V, r"aux must be .* 5 tensors, got 4"),
        "chain stats of another batch": (chain(aux=[*aux_c[:2], aux_c[2][:, :1], *aux_c[3:]]), V,
                                         r"aux\[2\] must be .* stats"),
        "chain stats as float32": (chain(aux=[*aux_c[:2], aux_c[2].float(), *aux_c[3:]]), T_, r"aux\[2\] .* dtype"),
        "chain pre of a preset": (chain(aux=[aux_tv[0], *aux_c[1:]]), V, r"aux\[0\] must be"),
        "chain without its params": (chain(params=[]), V, r"params besides weight and bias"),
        "chain params of fewer rows": (chain(params=[p[:2] for p in pc[2:]]), V, r"params\[0\] \(norm_weight\)"),
        "chain params on meta": (chain(params=[p.to("meta") for p in pc[2:]]), D, r"params\[0\] .* must be on"),
    }


def call(args):
    """The backward on a case's arguments: positional, or (positional, keywords) for a chain's."""
    if isinstance(args[-1], dict):
        return torch.ops.contres.ode_backward(*args[0], **args[1])
    return torch.ops.contres.ode_backward(*args)


def run_all(device):
    for name, (args, _, _) in cases(device).items():
        print(f"case {name}", flush=True)
        try:
            call(args)
        except Exception as exc:  # noqa: BLE001
            print(f"raised {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
        else:
            print(f"ok {name}", flush=True)


if __name__ == "__main__":
    import contres  # noqa: F401  (registers the ops)

    run_all(sys.argv[1] if len(sys.argv) > 1 else "cpu")
