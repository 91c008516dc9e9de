"""pytest-benchmark suite of the ODE block: ``pytest bench/ --benchmark-only``.

The same cases and methods as ``python -m contres.bench`` (its default cases on every available device), built
by the same functions; each (case, method) is timed for the forward and for forward+backward. The forward's
activation memory and the max difference from eager are stored in each benchmark's extra_info.
"""
import pytest

from contres import bench as cb

ROUNDS = 3
PHASES = ("fwd", "fwd_bwd")
CASES = [case for device in cb.available_devices() for case in cb.make_cases(device, cb.parse_args([]))]
PARAMS = [pytest.param(case, method, phase, id=f"{case.device}-{case.name}-{method}-{phase}".replace(" ", "-"))
          for case in CASES for method in cb.METHODS for phase in PHASES]


class _Built:
    """The current case's inputs and eager reference, and its methods, built once (PARAMS run case by case)."""

    def __init__(self):
        self.case, self.inputs, self.ref, self.methods = None, None, None, {}

    def get(self, case, method):
        if case != self.case:  # a new case: drop the previous one's tensors and compiled graphs
            self.case, self.inputs, self.methods = case, cb.make_inputs(case), {}
            self.ref = cb.fwd_bwd_runner(cb.build_method("eager", case), self.inputs, case)()
        if method not in self.methods:
            self.methods[method] = self._build(method)
        return self.methods[method]

    def _build(self, method):
        case, inputs = self.case, self.inputs
        try:
            fn = cb.build_method(method, case)
            out, grads = cb.fwd_bwd_runner(fn, inputs, case)()  # first call: compiles, and checks it runs
        except cb.MethodSkipped as exc:
            return exc
        except Exception as exc:  # noqa: BLE001
            return cb.MethodSkipped(f"failed: {cb._short_error(exc)}")
        mem = cb.forward_memory(cb.forward_runner(fn, inputs, case), inputs, case.device)
        info = {"act_mem_mib": mem["act"] / cb.MIB, "peak_mem_mib": mem["peak"] / cb.MIB,
                "max_diff_out": cb.max_abs_diff(out, self.ref[0]),
                "max_diff_grad_w": cb.max_abs_diff(grads[1], self.ref[1][1])}
        return fn, info


@pytest.fixture(scope="module")
def built():
    return _Built()


@pytest.mark.parametrize("case, method, phase", PARAMS)
def test_ode_block(benchmark, built, case, method, phase):
    entry = built.get(case, method)
    if isinstance(entry, cb.MethodSkipped):
        pytest.skip(str(entry))
    fn, info = entry
    make_runner = cb.forward_runner if phase == "fwd" else cb.fwd_bwd_runner
    runner = cb.synced(make_runner(fn, built.inputs, case), case.device)
    benchmark.group = f"{case.device} {case.name} {phase}"
    benchmark.extra_info.update(info, device=case.device, case=case.name, method=method, phase=phase)
    benchmark.pedantic(runner, rounds=ROUNDS, warmup_rounds=1, iterations=1)
