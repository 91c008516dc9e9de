"""pytest-benchmark suite of the ODE block: ``pytest bench/ --benchmark-only``.

The same cases and methods as ``python -m contres.bench`` (its default cases on every available device), built
by the same functions; each (case, method) is timed for the forward and for forward+backward. The forward's
activation memory, the path that ran and the max difference from eager are stored in each benchmark's extra_info.
"""
import pytest

from contres import bench as cb
from contres.bench import methods

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
            methods.reset_compiled()
            self.case, self.inputs, self.methods = case, cb.make_inputs(case), {}
            self.ref = cb.fwd_bwd_runner(cb.build_method("eager", case), self.inputs, case)()
        if method not in self.methods:
            self.methods[method] = self._build(method)
        return self.methods[method]

    def _build(self, method):
        """The method's Prepared (first call, memory, differences) or the MethodSkipped that says why not."""
        prepared = cb.prepare_method(method, self.case, self.inputs, self.ref)
        if prepared is None:
            return cb.MethodSkipped("not available here", silent=True)
        if prepared.forward is None:
            return cb.MethodSkipped(prepared.row["note"])
        return prepared


@pytest.fixture(scope="module")
def built():
    return _Built()


@pytest.mark.parametrize("case, method, phase", PARAMS)
def test_ode_block(benchmark, built, case, method, phase):
    entry = built.get(case, method)
    if isinstance(entry, cb.MethodSkipped):
        pytest.skip(str(entry))
    runner = cb.synced(entry.forward if phase == "fwd" else entry.fwd_bwd, case.device)
    info = {key: entry.row[key] for key in ("act_mem_mib", "peak_mem_bytes", "max_diff_out", "max_diff_grad_w",
                                            "path")}
    benchmark.group = f"{case.device} {case.name} {phase}"
    benchmark.extra_info.update(info, device=case.device, case=case.name, method=method, phase=phase)
    benchmark.pedantic(runner, rounds=ROUNDS, warmup_rounds=1, iterations=1)
