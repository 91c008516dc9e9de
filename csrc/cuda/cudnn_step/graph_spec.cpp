#include "graph_spec.h"

#include <cstdio>

namespace contres {
namespace cudnn_fusion {

namespace {
const char* const kKindNames[kNumGraphKinds] = {"fwd_single", "conv_bias_act", "conv_axpy", "dgrad_gate",
                                                "dgrad_add",  "conv_gate",     "wgrad"};

const char* act_name(Act act) {
  switch (act) {
    case Act::Identity: return "identity";
    case Act::Relu: return "relu";
    case Act::LeakyRelu: return "leaky_relu";
    case Act::Tanh: return "tanh";
    case Act::Sigmoid: return "sigmoid";
  }
  return "?";
}

bool uses_act(GraphKind kind) {
  return kind == GraphKind::FwdSingle || kind == GraphKind::ConvBiasAct || kind == GraphKind::DgradGate ||
         kind == GraphKind::ConvGate;
}
bool uses_gate(GraphKind kind) {
  return kind == GraphKind::FwdSingle || kind == GraphKind::DgradGate || kind == GraphKind::ConvGate;
}
}  // namespace

const char* kind_name(GraphKind kind) { return kKindNames[static_cast<int>(kind)]; }

bool parse_kind(const std::string& name, GraphKind* kind) {
  for (int i = 0; i < kNumGraphKinds; ++i)
    if (name == kKindNames[i]) {
      *kind = static_cast<GraphKind>(i);
      return true;
    }
  return false;
}

const char* gate_name(GateInput gate) {
  switch (gate) {
    case GateInput::None: return "none";
    case GateInput::Mask: return "mask";
    case GateInput::Value: return "value";
  }
  return "?";
}

bool gate_fits(Act act, GateInput gate, bool writes) {
  switch (gate) {
    case GateInput::None: return act == Act::Identity;
    case GateInput::Mask: return act == Act::Relu || act == Act::LeakyRelu || (act == Act::Identity && !writes);
    case GateInput::Value: return true;
  }
  return false;
}

std::string spec_problem(const GraphSpec& s) {
  const bool half = s.dtype == at::kHalf || s.dtype == at::kBFloat16;
  if (s.dtype != at::kFloat && !half) return std::string("dtype ") + c10::toString(s.dtype) + " is not supported";
  if (s.B < 1 || s.C < 1 || s.H < 1 || s.W < 1) return "empty problem";
  if (s.C % (half ? 8 : 4) != 0) return "C must be a multiple of " + std::to_string(half ? 8 : 4);
  if (s.k < 1 || s.k % 2 == 0) return "the kernel size must be odd";
  if (s.kind == GraphKind::Wgrad && s.out_dtype != at::kFloat && s.out_dtype != s.dtype)
    return "dK must be float32 or the state dtype";
  if (uses_gate(s.kind)) {
    const bool writes = s.kind == GraphKind::FwdSingle;
    if (writes && !s.gate_out) return {};
    if (!gate_fits(s.act, s.gate, writes))
      return std::string("gate ") + gate_name(s.gate) + " does not fit " + act_name(s.act);
  }
  return {};
}

std::string describe(const GraphSpec& s) {
  char buf[256];
  int n = std::snprintf(buf, sizeof buf, "%s %s B%lld C%lld %lldx%lld k%lld", kind_name(s.kind), c10::toString(s.dtype),
                        static_cast<long long>(s.B), static_cast<long long>(s.C), static_cast<long long>(s.H),
                        static_cast<long long>(s.W), static_cast<long long>(s.k));
  std::string out(buf, n);
  if (uses_act(s.kind)) out += std::string(" ") + act_name(s.act);
  if (s.kind == GraphKind::FwdSingle && s.gate_out) out += std::string(" gate_out=") + gate_name(s.gate);
  if (s.kind == GraphKind::DgradGate || s.kind == GraphKind::ConvGate) {
    out += std::string(" gate=") + gate_name(s.gate);
    if (s.bias_out) out += " bias_grad";
  }
  if (s.kind != GraphKind::ConvBiasAct && s.kind != GraphKind::Wgrad) {
    // Hex float: exact, so two scalars that differ in the last bit get different graphs.
    n = std::snprintf(buf, sizeof buf, " s=%a", s.scalar);
    out.append(buf, n);
  }
  if (s.kind == GraphKind::Wgrad)
    out += std::string(" dK=") + c10::toString(s.out_dtype) + (s.out_channels_last ? "/KRSC" : "/KCRS");
  if (s.dtype == at::kFloat) out += s.tf32 ? " tf32" : " fp32";
  if (s.deterministic) out += " deterministic";
  return out;
}

}  // namespace cudnn_fusion
}  // namespace contres
