// The cuDNN frontend, for the files that build, run and check the fused graphs. What it includes from CUDA,
// cuDNN, NVRTC and libdl comes first, with its normal visibility; the frontend's own inline code is then
// compiled hidden, so it stays private to this library (libtorch_cuda carries its own, older copy).
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <dlfcn.h>
#include <nvrtc.h>

#define CUDNN_FRONTEND_SKIP_JSON_LIB  // not needed here, and it halves the compile time of each file
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"  // static helpers in the frontend's headers
#pragma GCC visibility push(hidden)
#include <cudnn_frontend.h>
#pragma GCC visibility pop
#pragma GCC diagnostic pop

#include <memory>
#include <vector>

#include "graph_spec.h"

namespace contres {
namespace cudnn_fusion {

namespace fe = cudnn_frontend;

// Hidden like the frontend graph it holds.
struct __attribute__((visibility("hidden"))) DeviceGraph {
  std::shared_ptr<fe::graph::Graph> graph;
};

// The frontend graph of one spec, constructed (not yet validated or lowered).
std::shared_ptr<fe::graph::Graph> make_graph(const GraphSpec& spec);

// Bars the engines whose numerics the spec does not allow (after the heuristics, before check_support).
void deselect_engines(fe::graph::Graph& graph, const GraphSpec& spec);

// The heuristics modes asked, in order.
const std::vector<fe::HeurMode_t>& heuristics();

}  // namespace cudnn_fusion
}  // namespace contres
