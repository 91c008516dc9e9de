"""The low-level ops handed tensors they did not make (tests/foreign_cases.py): every case raises a clear error
naming the argument, leaves every input bit-for-bit unchanged, and never crashes the process (the whole list runs
in a child process first)."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from conftest import DEVICE_PARAMS, assert_bitwise_equal
from contres._subprocess import child_env, python_command
from foreign_cases import call, cases

HERE = os.path.dirname(os.path.abspath(__file__))
CASE_NAMES = list(cases("cpu"))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_no_case_crashes_the_process(device):
    # The parent's environment with tests/ and this contres in front of PYTHONPATH; the child checks that it
    # imported the same contres before its first case.
    proc = subprocess.run(python_command(os.path.join(HERE, "foreign_cases.py"), device), capture_output=True,
                          text=True, timeout=300, env=child_env(HERE))
    started = [line[5:] for line in proc.stdout.splitlines() if line.startswith("case ")]
    where = repr(started[-1]) if started else "(before the first case)"
    assert proc.returncode == 0, f"the process died (code {proc.returncode}) in case {where}:\n{proc.stderr[-3000:]}"
    assert started == CASE_NAMES
    accepted = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert not accepted, f"foreign tensors accepted: {accepted}"


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_foreign_tensor_is_refused(device, name):
    args, exc, match = cases(device)[name]
    everything = list(args[0]) + list(args[1].values()) if isinstance(args[-1], dict) else list(args)
    flat = [t for a in everything for t in (a if isinstance(a, list) else [a])]
    tensors = [a for a in flat if isinstance(a, torch.Tensor) and a.device.type != "meta"]
    before = [t.detach().clone() for t in tensors]
    with pytest.raises(exc, match=match):
        call(args)
    for i, (t, b) in enumerate(zip(tensors, before)):
        assert_bitwise_equal(t, b, f"input {i}")


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_what_the_forward_made_is_accepted_in_every_layout_it_can_take(device):
    """The positive side: channels_last grad_out, a dense view of the states at an offset in a larger buffer,
    and the states / aux of every configuration are accepted and give the reference's gradients."""
    from foreign_cases import RELU, _forward, _inputs
    x, w, b = _inputs(device)
    _, st, aux = _forward(x, w, b, RELU)
    gy = torch.randn_like(x)
    want = torch.ops.contres.ode_backward(gy, x, w, b, st, aux, 0.25, *RELU)
    offset = torch.empty(st.numel() + 7, dtype=st.dtype, device=device)
    moved = offset[7:].view(st.shape[0], x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 1, 4, 2, 3)
    moved.copy_(st)
    for got in (torch.ops.contres.ode_backward(gy.contiguous(memory_format=torch.channels_last), x, w, b, st, aux,
                                               0.25, *RELU),
                torch.ops.contres.ode_backward(gy, x, w, b, moved, aux, 0.25, *RELU)):
        for a, r in zip(got, want):
            torch.testing.assert_close(a, r, rtol=0, atol=0)
