// The CUDA entry points of the ops (driver/entry.h): the path the current settings choose for a call (paths.h),
// and the CUDA graph around it when graphs are on.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "../driver/entry.h"
#include "../paths.h"
#include "graphs/graph_cache.h"
#include "precision.h"

namespace contres {
namespace {

// "auto" runs ATen's convolutions step by step: the fused graphs and CUDA graphs are chosen explicitly
// (set_cuda_paths / CONTRES_CUDA_CONV, CONTRES_CUDA_GRAPHS) until GPU measurements set the rule.
bool use_graphs(const PathSettings& s) {
  return s.graphs == GraphMode::On && !deterministic();  // deterministic runs stay on the plain, checked path
}

// The fused cuDNN graphs when asked for and built (each step falls back to ATen where a graph cannot run).
bool use_fused(const PathSettings& s) {
#ifdef CONTRES_WITH_CUDNN_FUSION
  return s.conv == ConvPath::Fused && !deterministic();
#else
  (void)s;
  return false;
#endif
}

// The call's configuration, step and path; h enters by its bits, so steps that differ in one bit differ.
std::string config_key(const Call& c, const std::string& conv) {
  uint64_t h_bits = 0;
  std::memcpy(&h_bits, &c.h, sizeof h_bits);
  return std::string(name_of(c.cfg.method)) + '|' + name_of(c.cfg.layer) + '|' + name_of(c.cfg.act) + '|' +
         name_of(c.cfg.norm) + '|' + name_of(c.cfg.memory) + '|' + std::to_string(c.cfg.checkpoint) + '|' +
         name_of(c.interp) + "|n=" + std::to_string(c.dims.n_steps) + "|h=" + std::to_string(h_bits) + '|' + conv;
}

// The call with the convolution path of the current settings, the path's name, and whether to use graphs.
struct Chosen {
  Call call;
  std::string conv;
  bool graphs;
};

Chosen choose(const Call& plain) {
  const PathSettings s = path_settings();
  Chosen c{plain, "", use_graphs(s)};
  c.call.fused_conv = use_fused(s);
  c.conv = c.call.fused_conv ? "fused" : "aten";
  return c;
}

}  // namespace

ForwardResult cuda_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const Call& plain) {
  const Chosen chosen = choose(plain);
  const Call& call = chosen.call;
  const std::string& conv = chosen.conv;
  if (chosen.graphs) {
    auto body = [&call](const at::Tensor& xs, const at::Tensor& ws, const at::Tensor& bs) {
      return forward_impl(xs, ws, bs, call);
    };
    const std::string key = cuda_graphs::key_of(config_key(call, conv), x, weight, bias);
    if (auto r = cuda_graphs::forward(key, x, weight, bias, body)) {
      record_path(Direction::Forward, "cuda:" + conv + "+graph");
      return *r;
    }
  }
  record_path(Direction::Forward, "cuda:" + conv);
  return forward_impl(x, weight, bias, call);
}

BackwardResult cuda_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, const at::Tensor& states, const at::Tensor& aux,
                             const Call& plain) {
  const Chosen chosen = choose(plain);
  const Call& call = chosen.call;
  const std::string& conv = chosen.conv;
  if (chosen.graphs) {
    auto body = [&](const at::Tensor& g, const at::Tensor& xs, const at::Tensor& ws, const at::Tensor& bs) {
      return backward_impl(g, xs, ws, bs, states, aux, call);
    };
    if (auto r = cuda_graphs::backward(grad_out, x, weight, bias, states, aux, body)) {
      record_path(Direction::Backward, "cuda:" + conv + "+graph");
      return *r;
    }
  }
  record_path(Direction::Backward, "cuda:" + conv);
  return backward_impl(grad_out, x, weight, bias, states, aux, call);
}

}  // namespace contres
