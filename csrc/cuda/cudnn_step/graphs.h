// Internal seam between the ATen side (fused_step.cpp: argument checks, tensors, workspace) and the cuDNN
// frontend side (graphs.cpp: graph construction, plan cache, execution). Only graphs.cpp includes the frontend,
// whose headers take most of this module's compile time.
#pragma once

#include <cstdint>
#include <memory>

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
enum Role : int { kIn = 0, kFilter, kBias, kAdd, kGate, kDy, kOut, kOut2, kBiasOut, kNumRoles };

struct Operands {
  void* ptr[kNumRoles] = {};
};

struct Plan;  // a built graph with its record; defined in graphs.cpp

// The plan of spec on the current device (compute capability sm, e.g. 90), built on first use. Null when cuDNN
// cannot build it, now or in an earlier call, or when it is not built yet and may_build is false.
std::shared_ptr<Plan> find_plan(const GraphSpec& spec, int device, int sm, bool may_build);

int64_t workspace_bytes(const Plan& plan);

// Executes plan on the current stream with these operands and a workspace of workspace_bytes(plan). False when
// cuDNN refused (the plan is then marked failed and not used again).
bool execute(Plan& plan, const Operands& operands, void* workspace);

}  // namespace cudnn_fusion
}  // namespace contres
