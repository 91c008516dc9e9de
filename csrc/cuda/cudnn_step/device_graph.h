// The seam between the frontend side of the fused graphs (graph_build.cpp, execute.cpp: the only files that
// compile the cuDNN frontend, whose headers take most of this module's compile time) and the rest: the plan
// cache (plan_cache.cpp) and the ATen side (fused_step.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "graph_spec.h"

namespace contres {
namespace cudnn_fusion {

// The operands of a graph by role. Per kind (unused roles stay null):
//   FwdSingle:   In = u, Filter = K, Bias = b, Out = u_next, Out2 = gate_out (optional)
//   ConvBiasAct: In = u, Filter = K, Bias = b, Out = a
//   ConvAxpy:    In = v, Filter = K, Add = base, Out = y
//   DgradGate:   In = g, Filter = K, Add = lam, Gate = gate, Out = lam_out, Out2 = g_out, BiasOut (optional)
//   DgradAdd:    In = g, Filter = K, Add = lam, Out = lam_out
//   ConvGate:    In = v, Filter = K, Gate = gate, Out = g_out, BiasOut (optional)
//   Wgrad:       In = u, Dy = g, Out = dK
// A graph's operand has the UID role + 1, so execution needs no tensor map.
enum Role : int { kIn = 0, kFilter, kBias, kAdd, kGate, kDy, kOut, kOut2, kBiasOut, kNumRoles };

struct Operands {
  void* ptr[kNumRoles] = {};
};

struct DeviceGraph;  // a frontend graph built for a device (graph_build.cpp)

struct BuiltGraph {
  std::shared_ptr<DeviceGraph> graph;  // null when the build failed
  std::string engine;                  // the plan's engine name
  int64_t workspace = 0;               // bytes
  std::string error;                   // what failed, when it did
};

// Builds the graph of spec for the current device (compute capability sm, e.g. 90) through its heuristics'
// first buildable plan (NVRTC compiles the runtime-fused kernels here).
BuiltGraph build_graph(const GraphSpec& spec, int sm);

// Runs a built graph on the current stream with these operands and a workspace of its size. False, with why,
// when cuDNN refused.
bool run_graph(DeviceGraph& graph, const Operands& operands, void* workspace, std::string* why);

}  // namespace cudnn_fusion
}  // namespace contres
