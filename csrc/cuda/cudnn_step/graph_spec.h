// What identifies one fused graph: the plan cache's key, and what the CPU-side check (check.h) builds. Plain
// data, no cuDNN: shared by the ATen side (fused_step.cpp), the plan cache, the frontend side (graph_build.cpp)
// and the Python bindings.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "../../describe.h"
#include "fused_step.h"

namespace contres {
namespace cudnn_fusion {

enum class GraphKind : int64_t {
  FwdSingle = 0,    // u_next = u + h act(conv(u, K) + b) [+ gate of z]           (run_forward_single)
  ConvBiasAct = 1,  // a = act(conv(u, K) + b)                                    (run_conv_bias_act)
  ConvAxpy = 2,     // y = base + alpha conv(v, K)                                (run_conv_axpy)
  DgradGate = 3,    // lam_out = dgrad(g, K) + lam; g_out = scale act' lam_out [+ bias sum] (run_dgrad_gate)
  DgradAdd = 4,     // lam_out = lam + alpha dgrad(g, K)                          (run_dgrad_add)
  ConvGate = 5,     // g_out = scale act' conv(v, K) [+ bias sum]                 (run_conv_gate)
  Wgrad = 6,        // dK = conv weight gradient of conv(u, .) under g            (run_wgrad)
};
constexpr int kNumGraphKinds = 7;

const char* kind_name(GraphKind kind);
bool parse_kind(const std::string& name, GraphKind* kind);  // false for an unknown name

struct GraphSpec {
  GraphKind kind = GraphKind::FwdSingle;
  at::ScalarType dtype = at::kFloat;  // of every state-sized tensor, K and b
  int64_t B = 0, C = 0, H = 0, W = 0, k = 3;
  Act act = Act::Identity;            // FwdSingle, ConvBiasAct, DgradGate, ConvGate
  Aux gate = Aux::None;               // FwdSingle (written, when gate_out), DgradGate and ConvGate (read)
  bool gate_out = false;              // FwdSingle: writes the gate of z
  bool bias_out = false;              // DgradGate, ConvGate: also reduces the bias gradient (float32)
  double scalar = 1.0;                // h (FwdSingle), alpha (ConvAxpy, DgradAdd), scale (DgradGate, ConvGate)
  at::ScalarType out_dtype = at::kFloat;  // Wgrad: dK's dtype (float32 or dtype)
  bool out_channels_last = true;          // Wgrad: dK in KRSC (channels_last) or KCRS (contiguous)
  bool tf32 = true;            // float32 may use TF32 tensor cores (torch.backends.cudnn.allow_tf32)
  bool deterministic = false;  // only engines without the nondeterministic numerical note
};

// Whether act' can be formed from this gate (and, for FwdSingle, whether the gate can be written): Mask for
// relu and leaky_relu, Value for every activation, None for identity (whose act' is 1 whatever the gate).
bool gate_fits(Act act, Aux gate, bool writes);

// Argument-free checks of a spec: dtype, channel alignment, odd kernel, positive sizes, gate. Empty when fine,
// else why not.
std::string spec_problem(const GraphSpec& spec);

}  // namespace cudnn_fusion

// A readable, exact description (scalars in hex float): the plan cache's key, and GraphRecord::key.
std::string describe(const cudnn_fusion::GraphSpec& spec);

}  // namespace contres
