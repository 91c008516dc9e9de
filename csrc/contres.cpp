// Every op schema of contres in one place, the CPU registrations, and the Python module with build_info.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "ode_block.h"
#ifdef CONTRES_WITH_CUDNN_FUSION
#include "cuda/cudnn_step/bindings.h"
#endif

#ifndef CONTRES_TORCH_VERSION
#define CONTRES_TORCH_VERSION "unknown"
#endif
#ifndef CONTRES_CUDA_VERSION
#define CONTRES_CUDA_VERSION ""
#endif
#ifndef CONTRES_CUDA_ARCHS
#define CONTRES_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(contres, m) {
  m.def(
      "ode_forward(Tensor x, Tensor weight, Tensor bias, float h, str layer, str activation, int checkpoint,"
      " str norm=\"none\") -> (Tensor, Tensor, Tensor)");
  m.def(
      "ode_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, Tensor states, Tensor aux, float h,"
      " str layer, str activation, int checkpoint, str norm=\"none\") -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(contres, CPU, m) {
  m.impl("ode_forward", &contres::ode_forward);
  m.impl("ode_backward", &contres::ode_backward);
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "contres compiled ops (registered under torch.ops.contres)";
  m.def("build_info", [] {
    py::dict info;
    info["cpu_kernels"] = true;
#ifdef CONTRES_WITH_CUDA
    info["cuda_kernels"] = true;
    info["cuda_version"] = CONTRES_CUDA_VERSION;
    info["cuda_archs"] = CONTRES_CUDA_ARCHS;
#else
    info["cuda_kernels"] = false;
    info["cuda_version"] = py::none();
    info["cuda_archs"] = py::none();
#endif
#ifdef CONTRES_WITH_CUDNN_FUSION
    info["cudnn_fusion"] = true;  // fused cuDNN frontend graphs of one step (csrc/cuda/cudnn_step)
#else
    info["cudnn_fusion"] = false;
#endif
    info["torch_version"] = CONTRES_TORCH_VERSION;
    return info;
  });
#ifdef CONTRES_WITH_CUDNN_FUSION
  contres::cudnn_fusion::bind(m);
#endif
}
