// CPU-side validation of the fused graphs, without a GPU: every graph this module can build is constructed,
// validated and lowered to a cuDNN operation graph; given a device-property descriptor (cuDNN >= 9.8 deviceless
// plans, see cudnn_frontend::DeviceProperties) cuDNN's heuristics are asked for engines for that device and
// check_support is run, and optionally the first supported plan is built. Heuristics need libcuda.so.1 to load
// (the runtime-fusion engines report "not supported" without it); a stub whose calls all fail is enough (see
// tests/cuda_stub). With such a stub a plan build runs NVRTC and fails only when cuDNN loads the compiled module.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph_spec.h"

namespace contres {
namespace cudnn_fusion {

struct CheckResult {
  std::string key;                   // describe(spec)
  bool validated = false;            // graph.validate()
  bool lowered = false;              // build_operation_graph() (deviceless when a descriptor is given)
  std::vector<std::string> engines;  // heuristics' engine configs (modes A, then FALLBACK), in their order
  bool supported = false;            // check_support() for the descriptor's device, after the numerical filters
  std::string built_plan;            // build: the first supported config whose build was tried
  std::string build_error;           // build: its error (with a stub driver: a module-load failure)
  std::string error;                 // the first failing stage before the build, empty when none failed
};

// device_properties_json: a serialized cudnn_frontend::DeviceProperties (empty: stop after lowering, which then
// needs no descriptor); sm_version: that device's compute capability, e.g. 90; build: also build the first
// supported plan (runs NVRTC; about 0.2 s a graph on the build machine).
std::vector<CheckResult> check_graphs(const std::vector<GraphSpec>& specs, const std::string& device_properties_json,
                                      int sm_version, bool build);

}  // namespace cudnn_fusion
}  // namespace contres
