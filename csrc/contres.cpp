// Every op schema of contres in one place, the CPU and Meta registrations, and the Python module with build_info
// and the controls of the CPU buffer pool and of the CUDA paths' caches.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "cpu/buffer_pool.h"
#include "cpu/own_conv_bindings.h"
#include "cuda_caches.h"
#include "ode_block.h"
#include "paths.h"
#ifdef CONTRES_WITH_CUDA
#include "cuda/graphs/capture.h"
#endif
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
      " str norm=\"none\", str method=\"euler\", str memory=\"states\", str interp=\"none\", int n_steps=0,"
      " ScalarType? conv_dtype=None, Tensor[]? params=None, float? norm_eps=None, int norm_groups=0,"
      " bool norm_affine=False, bool time_channel=False)"
      " -> (Tensor, Tensor, Tensor[])");
  m.def(
      "ode_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, Tensor states, Tensor[] aux, float h,"
      " str layer, str activation, int checkpoint, str norm=\"none\", str method=\"euler\", str memory=\"states\","
      " str interp=\"none\", int n_steps=0, ScalarType? conv_dtype=None, Tensor[]? params=None,"
      " float? norm_eps=None, int norm_groups=0, bool norm_affine=False, bool time_channel=False)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(contres, CPU, m) {
  m.impl("ode_forward", &contres::ode_forward);
  m.impl("ode_backward", &contres::ode_backward);
}

#ifdef CONTRES_WITH_CUDA
TORCH_LIBRARY_IMPL(contres, CUDA, m) {  // the same device-agnostic driver; it sets x's device itself
  m.impl("ode_forward", &contres::ode_forward);
  m.impl("ode_backward", &contres::ode_backward);
}
#endif

TORCH_LIBRARY_IMPL(contres, Meta, m) {
  m.impl("ode_forward", &contres::ode_forward_meta);
  m.impl("ode_backward", &contres::ode_backward_meta);
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
  m.def("set_cuda_paths", &contres::set_path_settings, py::arg("conv"), py::arg("graphs"));
  m.def("cuda_paths", [] {
    const contres::PathSettings s = contres::path_settings();
    py::dict d;
    d["conv"] = contres::name_of(s.conv);
    d["graphs"] = contres::name_of(s.graphs);
    return d;
  });
  m.def("set_cpu_paths", &contres::set_cpu_conv_path, py::arg("conv"));
  m.def("cpu_paths", [] {
    py::dict d;
    d["conv"] = contres::name_of(contres::cpu_conv_path());
    return d;
  });
  contres::bind_own_conv(m);
  // Tests only: the chains' run passes on the CPU kernels ("auto") or composed of ATen operations ("aten").
  m.def("_set_run_passes", &contres::set_run_passes, py::arg("passes"));
  m.def("last_paths", [] {
    py::dict d;
    d["forward"] = contres::last_path(contres::Direction::Forward);
    d["backward"] = contres::last_path(contres::Direction::Backward);
    return d;
  });
  m.def("cpu_pool_stats", [] {
    const contres::PoolStats s = contres::pool_stats();
    py::dict d;
    d["cached_bytes"] = s.cached_bytes;
    d["cached_blocks"] = s.cached_blocks;
    d["limit_bytes"] = s.limit_bytes;
    d["in_use_bytes"] = s.in_use_bytes;
    d["working_set_bytes"] = s.working_set_bytes;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["evictions"] = s.evictions;
    return d;
  });
  m.def("cpu_pool_set_limit", &contres::pool_set_limit, py::arg("bytes"));
  m.def("cpu_pool_empty", &contres::pool_empty);
  m.def("cpu_pool_reset_counters", &contres::pool_reset_counters);
  m.def("cpu_pool_block_bytes", [](uintptr_t data) { return contres::pool_block_bytes(reinterpret_cast<void*>(data)); },
        py::arg("data_ptr"));
  m.def("cuda_graph_cache_stats", [] {
    const contres::GraphCacheStats s = contres::cuda_graph_cache_stats();
    py::dict d;
    d["keys"] = s.keys;
    d["instances"] = s.instances;
    d["max_keys"] = s.max_keys;
    d["max_instances"] = s.max_instances;
    d["captures"] = s.captures;
    d["replays"] = s.replays;
    d["capture_failures"] = s.capture_failures;
    d["evictions"] = s.evictions;
    return d;
  });
  m.def("cuda_graph_cache_set_limit", &contres::cuda_graph_cache_set_limit, py::arg("max_keys"),
        py::arg("max_instances"));
  m.def("cuda_graph_cache_empty", &contres::cuda_graph_cache_empty);
  m.def("cudnn_plan_cache_stats", [] {
    const contres::PlanCacheStats s = contres::cudnn_plan_cache_stats();
    py::dict d;
    d["plans"] = s.plans;
    d["max_plans"] = s.max_plans;
    d["builds"] = s.builds;
    d["build_failures"] = s.build_failures;
    d["evictions"] = s.evictions;
    d["build_seconds"] = s.build_seconds;
    return d;
  });
  m.def("cudnn_plan_cache_set_limit", &contres::cudnn_plan_cache_set_limit, py::arg("max_plans"));
  m.def("cudnn_plan_cache_empty", &contres::cudnn_plan_cache_empty);
#ifdef CONTRES_WITH_CUDA
  // Tests only: the next CUDA-graph capture breaks, as one does when the captured work synchronises.
  m.def("_cuda_graph_break_next_capture", &contres::cuda_graphs::break_next_capture);
#endif
#ifdef CONTRES_WITH_CUDNN_FUSION
  contres::cudnn_fusion::bind(m);
#endif
}
