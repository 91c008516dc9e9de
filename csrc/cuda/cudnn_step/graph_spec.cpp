#include "graph_spec.h"

#include <cstdio>

namespace contres {
namespace cudnn_fusion {

namespace {
const char* const kKindNames[kNumGraphKinds] = {"fwd_single", "conv_bias_act", "conv_axpy", "dgrad_gate",
                                                "dgrad_add",  "conv_gate",     "wgrad"};

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

bool gate_fits(Act act, Aux gate, bool writes) {
  switch (gate) {
    case Aux::None: return act == Act::Identity;
    case Aux::Mask: return act == Act::Relu || act == Act::LeakyRelu || (act == Act::Identity && !writes);
    case Aux::Value: return true;
    case Aux::Pre: return false;  // the tv norm's z: no graph reads or writes it
  }
  return false;
}

std::string spec_problem(const GraphSpec& s) {
  const bool half = s.dtype == at::kHalf || s.dtype == at::kBFloat16;
  if (s.dtype != at::kFloat && !half) return "dtype " + contres::describe(s.dtype) + " is not supported";
  if (s.B < 1 || s.C < 1 || s.H < 1 || s.W < 1) return "empty problem";
  if (s.C % (half ? 8 : 4) != 0) return "C must be a multiple of " + std::to_string(half ? 8 : 4);
  if (s.k < 1 || s.k % 2 == 0) return "the kernel size must be odd";
  if (s.kind == GraphKind::Wgrad && s.out_dtype != at::kFloat && s.out_dtype != s.dtype)
    return "dK must be float32 or the state dtype";
  if (uses_gate(s.kind)) {
    const bool writes = s.kind == GraphKind::FwdSingle;
    if (writes && !s.gate_out) return {};
    if (!gate_fits(s.act, s.gate, writes))
      return std::string("gate ") + name_of(s.gate) + " does not fit " + name_of(s.act);
  }
  return {};
}

}  // namespace cudnn_fusion

std::string describe(const cudnn_fusion::GraphSpec& s) {
  using cudnn_fusion::GraphKind;
  std::string out = std::string(kind_name(s.kind)) + ' ' + describe(s.dtype) + " B" + std::to_string(s.B) + " C" +
                    std::to_string(s.C) + ' ' + std::to_string(s.H) + 'x' + std::to_string(s.W) + " k" +
                    std::to_string(s.k);
  if (cudnn_fusion::uses_act(s.kind)) out += std::string(" ") + name_of(s.act);
  if (s.kind == GraphKind::FwdSingle && s.gate_out) out += std::string(" gate_out=") + name_of(s.gate);
  if (s.kind == GraphKind::DgradGate || s.kind == GraphKind::ConvGate) {
    out += std::string(" gate=") + name_of(s.gate);
    if (s.bias_out) out += " bias_grad";
  }
  if (s.kind != GraphKind::ConvBiasAct && s.kind != GraphKind::Wgrad) {
    // Hex float: exact, so two scalars that differ in the last bit get different graphs.
    char buf[64];
    const int n = std::snprintf(buf, sizeof buf, " s=%a", s.scalar);
    out.append(buf, static_cast<size_t>(n));
  }
  if (s.kind == GraphKind::Wgrad) out += " dK=" + describe(s.out_dtype) + (s.out_channels_last ? "/KRSC" : "/KCRS");
  if (s.dtype == at::kFloat) out += s.tf32 ? " tf32" : " fp32";
  if (s.deterministic) out += " deterministic";
  return out;
}

}  // namespace contres
