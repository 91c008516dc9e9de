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
  return std::string(name_of(c.cfg.method)) + '|' + describe_stages(c.cfg.stages) + '|' + name_of(c.cfg.act) + '|' +
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

// CUDA graphs serve the presets' calls (one aux tensor at most, no params); chains run plainly.
bool graphs_serve(const Call& call, at::TensorList params) { return call.plan.layer_passes && params.empty(); }

at::Tensor only_aux(const std::vector<at::Tensor>& aux) { return aux.empty() ? at::Tensor() : aux[0]; }
std::vector<at::Tensor> aux_list(const at::Tensor& aux) {
  return aux.defined() ? std::vector<at::Tensor>{aux} : std::vector<at::Tensor>{};
}

}  // namespace

ForwardResult cuda_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           at::TensorList params, const Call& plain) {
  const Chosen chosen = choose(plain);
  const Call& call = chosen.call;
  const std::string& conv = chosen.conv;
  if (chosen.graphs && graphs_serve(call, params)) {
    auto body = [&call](const at::Tensor& xs, const at::Tensor& ws, const at::Tensor& bs) {
      auto [out, states, aux] = forward_impl(xs, ws, bs, {}, call);
      return std::make_tuple(out, states, only_aux(aux));
    };
    const std::string key = cuda_graphs::key_of(config_key(call, conv), x, weight, bias);
    if (auto r = cuda_graphs::forward(key, x, weight, bias, body)) {
      record_path(Direction::Forward, "cuda:" + conv + "+graph");
      return {std::get<0>(*r), std::get<1>(*r), aux_list(std::get<2>(*r))};
    }
  }
  record_path(Direction::Forward, "cuda:" + conv);
  return forward_impl(x, weight, bias, params, call);
}

BackwardResult cuda_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, at::TensorList params, const at::Tensor& states,
                             const std::vector<at::Tensor>& aux, const Call& plain) {
  const Chosen chosen = choose(plain);
  const Call& call = chosen.call;
  const std::string& conv = chosen.conv;
  if (chosen.graphs && graphs_serve(call, params)) {
    auto body = [&](const at::Tensor& g, const at::Tensor& xs, const at::Tensor& ws, const at::Tensor& bs) {
      auto [gx, gw, gb, drift, unused] = backward_impl(g, xs, ws, bs, {}, states, aux, call);
      return std::make_tuple(gx, gw, gb, drift);
    };
    if (auto r = cuda_graphs::backward(grad_out, x, weight, bias, states, only_aux(aux), body)) {
      record_path(Direction::Backward, "cuda:" + conv + "+graph");
      return {std::get<0>(*r), std::get<1>(*r), std::get<2>(*r), std::get<3>(*r), {}};
    }
  }
  record_path(Direction::Backward, "cuda:" + conv);
  return backward_impl(grad_out, x, weight, bias, params, states, aux, call);
}

}  // namespace contres
