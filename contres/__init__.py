"""contres: fused C++/CUDA kernels for continuous ResNets.

An ODE block integrates du/dt = f(u, theta(t)) with forward-Euler steps; contres runs the whole block,
and its exact discrete adjoint, as single compiled ops, with a pure-PyTorch reference beside them.
"""
from . import functional, ops, reference
from ._ext import build_info
from .block import ODEBlock

__version__ = "0.1.0"
__all__ = ["ODEBlock", "build_info", "functional", "reference", "ops", "__version__"]
