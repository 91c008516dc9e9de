"""The method registry: each method is a function (x, weight, bias, *params) -> u_N computing one case's block
(params: a ported right-hand side's other parameters, cases.RECIPES).

  fused             functional.ode_block(backend="fused"); under --autocast on the CPU it keeps the float32 state
                    and runs the convolutions in the autocast dtype (mixed precision, autocast_state="float32")
  fused_ckpt        the same with checkpoint=True (every ceil(sqrt(N))-th state kept, the rest recomputed)
  fused_reversible  leapfrog only: memory="reversible" (u_{N-1} and u_N kept, the states recomputed backward)
  fused_reduced     under --autocast only: fused with autocast_state="reduced", the whole block in the autocast dtype
  eager             reference.ode_block under autograd: the baseline of every ratio (for a ported right-hand side
                    the model's own ops: F.conv2d over torch.cat([t, z]), F.group_norm, ...). Under --autocast it
                    runs under plain torch.autocast (per-op casting: convolutions in low precision, the state in
                    float32), as a user's eager model does
  eager_blockcast   under --autocast only: functional.ode_block(backend="reference", autocast_state="reduced"),
                    the reference with the whole block cast to the autocast dtype, as fused_reduced
  compiled          torch.compile (inductor) of eager; compiled_blockcast likewise of eager_blockcast
  torchdiffeq       torchdiffeq.odeint on the fixed grid t_k = k T / N with the reference's right-hand side:
                    method "euler" for euler, "rk4" for rk4 (torchdiffeq's is the 3/8 rule, so it is a speed
                    comparison, not the same numbers); none for leapfrog; left out when not installed
  fused_graphed, eager_graphed
                    CUDA only: fused and eager captured in CUDA graphs, forward and backward
                    (torch.cuda.make_graphed_callables), as fixed-shape training can run them; replay removes the
                    host cost of every launch, which bounds small shapes
  fused_cudagraph, fused_cudnn, fused_cudnn_cudagraph
                    CUDA only: fused with contres' own paths forced (contres.set_cuda_paths): each whole call
                    replayed from a CUDA graph (graphs="on"), the convolutions fused with their elementwise work
                    as cuDNN graphs (conv="fused"), or both. "fused" itself runs the "auto" paths.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import _ext, functional, ops, reference
from .cases import Case, Inputs, make_inputs

METHODS = ("fused", "fused_ckpt", "fused_reversible", "fused_reduced", "eager", "eager_blockcast", "compiled",
           "compiled_blockcast", "torchdiffeq", "fused_graphed", "eager_graphed", "fused_cudagraph", "fused_cudnn",
           "fused_cudnn_cudagraph")
CUDA_PATHS = {"fused_cudagraph": ("auto", "on"), "fused_cudnn": ("fused", "auto"),
              "fused_cudnn_cudagraph": ("fused", "on")}  # method -> (conv, graphs) of contres.set_cuda_paths
FUSED = ("fused", "fused_ckpt", "fused_reversible", "fused_reduced", "fused_graphed") + tuple(CUDA_PATHS)
GRAPHED = ("fused_graphed", "eager_graphed")
TORCHDIFFEQ_METHOD = {"euler": "euler", "rk4": "rk4"}  # integrator -> torchdiffeq's fixed-grid counterpart


class MethodSkipped(Exception):
    """The method cannot run for this case; silent=True leaves it out of the table altogether."""

    def __init__(self, reason: str, silent: bool = False):
        super().__init__(reason)
        self.silent = silent


def _eager_fn(case: Case) -> Callable:
    kwargs = case.reference_kwargs()

    def fn(x, weight, bias, *params):
        return reference.ode_block(x, weight, bias, params=params, **kwargs)
    return fn


def _functional_fn(case: Case, backend: str, **options) -> Callable:
    names = case.param_names()

    def fn(x, weight, bias, *params):
        return functional.ode_block(x, weight, bias, backend=backend, params=dict(zip(names, params)) or None,
                                    **case.block_kwargs(), **options)
    return fn


def _fused_fn(case: Case, paths=("auto", "auto"), **options) -> Callable:
    """The fused block with contres' CUDA paths set at every call (the backward that follows runs under them too,
    since the methods' calls are timed one method at a time)."""
    if not _ext.has_kernels(case.device):
        raise MethodSkipped(f"no fused {case.device} kernels in this build")
    block = _functional_fn(case, "fused", **options)
    if case.device != "cuda":
        return block

    def fn(*leaves):
        ops.set_cuda_paths(*paths)
        return block(*leaves)
    return fn


def _paths_fn(case: Case, name: str) -> Callable:
    if case.device != "cuda":
        raise MethodSkipped("contres' CUDA paths need a CUDA device", silent=True)
    conv, graphs = CUDA_PATHS[name]
    if conv == "fused" and not _ext.build_info().get("cudnn_fusion"):
        raise MethodSkipped("this build has no fused cuDNN graphs")
    return _fused_fn(case, paths=CUDA_PATHS[name])


def _reversible_fn(case: Case) -> Callable:
    if case.integrator != "leapfrog":
        raise MethodSkipped("memory='reversible' is leapfrog's", silent=True)
    return _fused_fn(case, memory="reversible")


def _blockcast_fn(case: Case) -> Callable:
    if case.autocast is None:  # without autocast there is no cast: the same as eager
        raise MethodSkipped("the same as eager without --autocast", silent=True)
    return _functional_fn(case, "reference", autocast_state="reduced")


def _reduced_fn(case: Case) -> Callable:
    if case.autocast is None:
        raise MethodSkipped("the same as fused without --autocast", silent=True)
    return _fused_fn(case, autocast_state="reduced")


def _compiled(fn: Callable) -> Callable:
    """torch.compile of fn; the caller resets dynamo's cache per case (reset_compiled), so that cases never share
    graphs or hit the recompile limit."""
    return torch.compile(fn)


def reset_compiled() -> None:
    """Forget every compiled graph: call at the start of each case."""
    import torch._dynamo

    torch._dynamo.reset()


def _torchdiffeq_fn(case: Case) -> Callable:
    """odeint on the grid t_k = k T / N; f(t, u) is the reference's right-hand side with the controls interpolated
    at t by the block's rule (reference.control_weights_at), so the Euler solution equals eager's to rounding."""
    solver = TORCHDIFFEQ_METHOD.get(case.integrator)
    if solver is None:
        raise MethodSkipped(f"torchdiffeq has no {case.integrator}", silent=True)
    try:
        import torchdiffeq
    except ImportError as exc:
        raise MethodSkipped(f"torchdiffeq not importable ({exc})", silent=True) from None
    kwargs = case.reference_kwargs()
    act = reference.activation_fn(case.activation)
    N, M, T = case.steps, case.n_controls, case.T
    q = 6 * N  # every stage time here (steps, their halves and thirds) is p / q of T for an integer p

    def controls_at(params, t):
        row = reference.control_weights_at([(round(float(t) / T * q), q)], M, case.interp)[0]
        terms = [(a, j) for j, a in enumerate(row) if a != 0.0]
        if len(terms) == 1 and terms[0][0] == 1.0:  # one control owns t: use it as it is (no copy)
            return [p[terms[0][1]] for p in params]
        return [sum(a * p[j] for a, j in terms) for p in params]

    def grid(func, y0, t):  # exactly N steps of size T / N (no ceil() round-off in the step count)
        return torch.linspace(0.0, T, N + 1, dtype=t.dtype, device=t.device)

    def fn(x, *params):
        def f(t, u):
            rows = controls_at(params, t)
            if kwargs["chain"] is not None:
                return reference.chain_rhs(u, float(t), rows, kwargs["chain"])
            return reference.rhs(u, rows[0], rows[1], case.layer, act, case.norm)

        t = torch.tensor([0.0, T], dtype=torch.float64, device=x.device)
        return torchdiffeq.odeint(f, x, t, method=solver, options={"grid_constructor": grid})[-1]
    return fn


def _graphed_fn(case: Case, build: Callable[[Case], Callable]) -> Callable:
    """build(case) captured in CUDA graphs, forward and backward; calls copy their inputs into the graphs'."""
    if case.device != "cuda":
        raise MethodSkipped("CUDA graphs need a CUDA device", silent=True)
    if case.autocast is not None:  # capture would need autocast(cache_enabled=False) around every call
        raise MethodSkipped("not measured under autocast")
    return torch.cuda.make_graphed_callables(build(case), make_inputs(case, seed=1).leaves)


_BUILDERS = {
    "fused": lambda case: _fused_fn(case),
    "fused_ckpt": lambda case: _fused_fn(case, checkpoint=True),
    "fused_reversible": _reversible_fn,
    "fused_reduced": _reduced_fn,
    "eager": _eager_fn,
    "eager_blockcast": _blockcast_fn,
    "compiled": lambda case: _compiled(_eager_fn(case)),
    "compiled_blockcast": lambda case: _compiled(_blockcast_fn(case)),
    "torchdiffeq": _torchdiffeq_fn,
    "fused_graphed": lambda case: _graphed_fn(case, _fused_fn),
    "eager_graphed": lambda case: _graphed_fn(case, _eager_fn),
    **{name: (lambda case, name=name: _paths_fn(case, name)) for name in CUDA_PATHS},
}


def build_method(name: str, case: Case) -> Callable:
    """The function (x, weight, bias, *params) -> u_N of a method; raises MethodSkipped when it cannot run."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown method {name!r}; choose from {METHODS}")
    return _BUILDERS[name](case)


def note(name: str, case: Case) -> str:
    """What a reader of the method's row must know beyond its numbers ("" when nothing)."""
    if name == "torchdiffeq" and case.integrator == "rk4":
        return "torchdiffeq's rk4 is the 3/8 rule, not the classic one: a speed comparison, its numbers differ"
    return ""


def path_of(name: str) -> Optional[dict]:
    """Which implementation ran: contres.ops.last_paths() after a fused method's call (None where this build has
    no such function), the method's own name otherwise."""
    if name not in FUSED:
        return {"forward": name, "backward": name}
    last_paths = getattr(ops, "last_paths", None)
    return None if last_paths is None else dict(last_paths())


def forward_runner(fn: Callable, inputs: Inputs, case: Case) -> Callable[[], torch.Tensor]:
    """One training-mode forward (autograd records the graph), under the case's autocast and precision setting."""
    def run():
        with case.precision_context(), case.autocast_context():
            return fn(*inputs.leaves)
    return run


def fwd_bwd_runner(fn: Callable, inputs: Inputs, case: Case) -> Callable:
    """One forward + backward (the backward under the case's precision setting too, outside autocast as in
    training); returns (output, (grad_x, grad_weight, grad_bias))."""
    forward = forward_runner(fn, inputs, case)

    def run():
        with case.precision_context():
            out = forward()
            return out, torch.autograd.grad(out, inputs.leaves, inputs.grad_out.to(out.dtype))
    return run
