"""Loads the compiled extension and says clearly what is missing when it cannot."""
from __future__ import annotations

import torch

_C = None
LOAD_ERROR: str | None = None
_BUILD_INFO: dict = {}

try:
    from contres import _C  # noqa: F811  (registers torch.ops.contres.*)
except ImportError as exc:  # not built, or built against another torch (undefined symbols)
    LOAD_ERROR = (f"the compiled extension contres._C could not be loaded ({exc}). Build it with "
                  "`pip install --no-build-isolation -e .` in this environment; after a torch upgrade, rebuild.")
else:
    _built = _C.build_info()["torch_version"]
    if _built.split("+")[0] != torch.__version__.split("+")[0]:
        LOAD_ERROR = (f"contres._C was built against torch {_built} but torch {torch.__version__} is installed; "
                      "rebuild with `pip install --no-build-isolation -e .`")
        _C = None
    else:
        # Read once: torch.compile cannot trace into the pybind function, and it never changes.
        _BUILD_INFO = dict(_C.build_info())


def available() -> bool:
    return _C is not None


def build_info() -> dict:
    """What the installed extension was built with: cpu_kernels, cuda_kernels, torch_version, cuda_version,
    cuda_archs (and load_error when it could not be loaded)."""
    if _C is None:
        return {"cpu_kernels": False, "cuda_kernels": False, "torch_version": None, "cuda_version": None,
                "cuda_archs": None, "load_error": LOAD_ERROR}
    return dict(_BUILD_INFO)


def has_kernels(device_type: str) -> bool:
    return bool(_BUILD_INFO.get(f"{device_type}_kernels", False))
