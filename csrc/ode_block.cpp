// Device-agnostic driver of the fused ODE block. Per step the convolutions go to ATen (oneDNN / cuDNN,
// near peak on both), and everything elementwise runs in one fused pass from kernels.h for the tensor's
// device. The step loop runs here, in one op call, in both directions.
#include "ode_block.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cpu/buffer_pool.h"
#include "kernels.h"

namespace contres {

Act parse_activation(const std::string& name) {
  if (name == "identity") return Act::Identity;
  if (name == "relu") return Act::Relu;
  if (name == "leaky_relu") return Act::LeakyRelu;
  if (name == "tanh") return Act::Tanh;
  if (name == "sigmoid") return Act::Sigmoid;
  TORCH_CHECK_VALUE(false, "contres: activation must be one of identity, relu, leaky_relu, tanh, sigmoid; got '",
                    name, "'");
}

Layer parse_layer(const std::string& name) {
  if (name == "single") return Layer::Single;
  if (name == "double_sym") return Layer::DoubleSym;
  TORCH_CHECK_VALUE(false, "contres: layer must be one of single, double_sym; got '", name, "'");
}

bool parse_norm(const std::string& name) {  // is it "tv"?
  if (name == "none") return false;
  if (name == "tv") return true;
  TORCH_CHECK_VALUE(false, "contres: norm must be one of none, tv; got '", name, "'");
}

Aux aux_kind(Layer layer, Act act, bool tv) {
  if (tv) return Aux::Pre;
  if (layer == Layer::DoubleSym) return Aux::Value;
  switch (act) {
    case Act::Identity: return Aux::None;
    case Act::Relu:
    case Act::LeakyRelu: return Aux::Mask;
    default: return Aux::Value;
  }
}

namespace {

// The layout of every state-sized tensor inside the ops, saved states included; the x-shaped outputs (u_N,
// dL/dx) keep x's own. Measured per convolution at the benchmark shapes: cuDNN on an H100 is about twice as
// fast in channels_last; oneDNN on the CPU 10-30 % faster with AVX-512 and no slower with AVX2 alone, as in
// NCHW it reorders to its blocked layouts and back on every call.
constexpr at::MemoryFormat kLayout = at::MemoryFormat::ChannelsLast;

struct Problem {
  Layer layer;
  Act act;
  Aux aux;        // what the full-storage forward keeps per step
  bool tv;        // norm "tv": z / sqrt(sum_c z^2 + kTvEps) before the activation
  double h;
  int64_t n_steps, checkpoint, pad;
  int64_t B, C, H, W;
};

Problem check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double h,
                     c10::string_view layer, c10::string_view activation, int64_t checkpoint,
                     c10::string_view norm) {
  Problem p;
  p.layer = parse_layer(std::string(layer));
  p.act = parse_activation(std::string(activation));
  p.tv = parse_norm(std::string(norm));
  p.aux = aux_kind(p.layer, p.act, p.tv);
  TORCH_CHECK_VALUE(x.dim() == 4, "contres: x must be 4-D (B, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(weight.dim() == 5, "contres: weight must be 5-D (n_steps, C, C, k, k), got ", weight.dim(), "-D");
  TORCH_CHECK_VALUE(bias.dim() == 2, "contres: bias must be 2-D (n_steps, C), got ", bias.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "contres: x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type(),
                   "contres: weight and bias must have x's dtype ", x.scalar_type(), ", got ", weight.scalar_type(),
                   " and ", bias.scalar_type());
  TORCH_CHECK(weight.device() == x.device() && bias.device() == x.device(),
              "contres: weight and bias must be on x's device ", x.device(), ", got ", weight.device(), " and ",
              bias.device());
  p.n_steps = weight.size(0);
  p.B = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  const int64_t k = weight.size(3);
  TORCH_CHECK_VALUE(p.n_steps >= 1, "contres: weight must hold at least one step, got n_steps = ", p.n_steps);
  TORCH_CHECK_VALUE(weight.size(1) == p.C && weight.size(2) == p.C && weight.size(4) == k && k % 2 == 1,
                    "contres: weight must be (n_steps, C, C, k, k) with C = ", p.C, " and odd k, got ", weight.sizes());
  TORCH_CHECK_VALUE(bias.size(0) == p.n_steps && bias.size(1) == p.C, "contres: bias must be (", p.n_steps, ", ",
                    p.C, "), got ", bias.sizes());
  TORCH_CHECK_VALUE(std::isfinite(h) && h > 0, "contres: h must be a positive finite step, got ", h);
  TORCH_CHECK_VALUE(checkpoint >= 0, "contres: checkpoint must be >= 0, got ", checkpoint);
  p.h = h;
  p.checkpoint = checkpoint;
  p.pad = k / 2;
  return p;
}

bool is_stored(const Problem& p, int64_t k) {  // is u_k (0 < k < N) in the saved states?
  return p.checkpoint == 0 || k % p.checkpoint == 0;
}
int64_t state_slot(const Problem& p, int64_t k) { return p.checkpoint == 0 ? k - 1 : k / p.checkpoint - 1; }
int64_t n_saved_states(const Problem& p) {
  return p.checkpoint == 0 ? p.n_steps - 1 : (p.n_steps - 1) / p.checkpoint;
}

// A buffer kept from forward to backward (CPU: from the buffer pool, see cpu/buffer_pool.h).
at::Tensor saved_empty(c10::IntArrayRef sizes, const at::TensorOptions& opts) {
  return opts.device().is_cpu() ? pooled_empty_cpu(sizes, opts) : at::empty(sizes, opts);
}

// n state-sized tensors in the internal layout, as one (n, B, C, H, W) tensor whose slices are states.
at::Tensor state_stack(const Problem& p, int64_t n, const at::TensorOptions& opts) {
  return saved_empty({n, p.B, p.H, p.W, p.C}, opts).permute({0, 1, 4, 2, 3});
}

// A dense channels_last tensor as one plane of numel elements in memory order, for the elementwise passes
// (they index memory linearly; all their operands share the layout).
at::Tensor flat(const at::Tensor& t) {
  if (!t.defined()) return t;
  const int64_t n = t.numel();
  return t.as_strided({1, 1, 1, n}, {n, n, n, 1});
}

void single_update(const at::Tensor& u_in, const at::Tensor& z_in, const Problem& p, Aux kind,
                   const at::Tensor& u_next_in, const at::Tensor& aux_in) {
  const at::Tensor u = flat(u_in), z = flat(z_in), u_next = flat(u_next_in);
  const at::Tensor aux_out = kind == Aux::Value ? flat(aux_in) : aux_in;
#ifdef CONTRES_WITH_CUDA
  if (u.is_cuda()) return single_update_cuda(u, z, p.h, p.act, kind, u_next, aux_out);
#endif
  TORCH_CHECK(u.is_cpu(), "contres: no fused kernel for device ", u.device(), " in this build");
  single_update_cpu(u, z, p.h, p.act, kind, u_next, aux_out);
}

// The adjoint gate of one step, g = dL/dz from lam (+ gi) and the step's aux; with norm "tv" also a = act(n)
// into a_out when defined. The bias gradient is reduced in the pass where the device can (CUDA with
// C % 8 == 0), else by an ATen reduction over (B, H, W).
void adjoint_gate(const at::Tensor& lam_in, const at::Tensor& gi_in, const at::Tensor& aux_in, const Problem& p,
                  double scale, const at::Tensor& v_in, const at::Tensor& g_in, const at::Tensor& bias_grad,
                  const at::Tensor& a_in) {
  const at::Tensor lam = flat(lam_in), gi = flat(gi_in), v_out = flat(v_in), g_out = flat(g_in);
  const at::Tensor aux = p.aux == Aux::Mask ? aux_in : flat(aux_in);
  bool wrote_bias = false;
  if (p.tv) {
    TORCH_CHECK(lam.is_cpu(), "contres: norm='tv' has fused kernels on the CPU only so far; on ", lam.device(),
                " use backend='reference' (backend='auto' does)");
    tv_adjoint_gate_cpu(lam, gi, aux, p.C, p.act, scale, v_out, g_out, flat(a_in));
  } else
#ifdef CONTRES_WITH_CUDA
  if (lam.is_cuda()) {
    wrote_bias = adjoint_gate_cuda(lam, gi, aux, p.aux, p.act, scale, v_out, g_out, bias_grad, p.C);
  } else
#endif
  {
    TORCH_CHECK(lam.is_cpu(), "contres: no fused kernel for device ", lam.device(), " in this build");
    adjoint_gate_cpu(lam, gi, aux, p.aux, p.act, scale, v_out, g_out);
  }
  if (!wrote_bias) at::sum_out(const_cast<at::Tensor&>(bias_grad), g_in, {0, 2, 3});
}

// Forward of one step with norm "tv" from z = conv(u) + b: the single layer writes u_next (when defined),
// double_sym a = act(n) over z; z_keep (when defined) gets z first. Returns what a double_sym step convolves.
at::Tensor tv_step(const at::Tensor& u, const at::Tensor& z, const Problem& p, const at::Tensor& u_next,
                   const at::Tensor& z_keep) {
  TORCH_CHECK(z.is_cpu(), "contres: norm='tv' has fused kernels on the CPU only so far; on ", z.device(),
              " use backend='reference' (backend='auto' does)");
  if (p.layer == Layer::Single && !u_next.defined()) {  // recomputation that only wants the aux
    if (z_keep.defined()) z_keep.copy_(z);
    return z;
  }
  const bool single = p.layer == Layer::Single;
  tv_forward_cpu(flat(z), p.C, p.act, single ? flat(u) : at::Tensor(), p.h, single ? flat(u_next) : at::Tensor(),
                 single ? at::Tensor() : flat(z), flat(z_keep));
  return z;
}

void activation_out(const at::Tensor& a, const at::Tensor& z, Act act) {
  switch (act) {
    case Act::Identity: if (!a.is_same(z)) a.copy_(z); break;
    case Act::Relu: at::clamp_min_out(const_cast<at::Tensor&>(a), z, 0); break;
    case Act::LeakyRelu: at::leaky_relu_out(const_cast<at::Tensor&>(a), z, kLeakySlope); break;
    case Act::Tanh: at::tanh_out(const_cast<at::Tensor&>(a), z); break;
    case Act::Sigmoid: at::sigmoid_out(const_cast<at::Tensor&>(a), z); break;
  }
}

at::Tensor conv(const at::Tensor& u, const at::Tensor& K, const std::optional<at::Tensor>& b, const Problem& p) {
  return at::conv2d(u, K, b, {1, 1}, {p.pad, p.pad}).contiguous(kLayout);
}

// One Euler step from u = u_k with kernel K and bias b. Writes u_{k+1} into u_next when it is defined and
// the step's aux (kind `kind`, may be Aux::None) into aux_out when that is defined.
void step_forward(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, const Problem& p, Aux kind,
                  const at::Tensor& u_next, const at::Tensor& aux_out) {
  if (p.layer == Layer::Single && kind == Aux::None && !u_next.defined()) return;  // nothing to recompute
  at::Tensor z = conv(u, K, b, p);
  if (p.tv) {
    const at::Tensor a = tv_step(u, z, p, u_next, kind == Aux::Pre ? aux_out : at::Tensor());
    if (p.layer == Layer::Single || !u_next.defined()) return;
    const at::Tensor y = at::conv_transpose2d(a, K, {}, {1, 1}, {p.pad, p.pad});
    at::add_out(const_cast<at::Tensor&>(u_next), u, y, -p.h);
    return;
  }
  if (p.layer == Layer::Single) {
    single_update(u, z, p, kind, u_next, kind == Aux::None ? at::Tensor() : aux_out);
    return;
  }
  const at::Tensor a = aux_out.defined() ? aux_out : z;
  activation_out(a, z, p.act);
  if (!u_next.defined()) return;
  const at::Tensor y = at::conv_transpose2d(a, K, {}, {1, 1}, {p.pad, p.pad});
  at::add_out(const_cast<at::Tensor&>(u_next), u, y, -p.h);
}

at::Tensor aux_buffer(const Problem& p, int64_t n, const at::TensorOptions& opts) {
  switch (p.aux) {
    case Aux::Mask: return saved_empty({n, p.B, p.C, mask_bytes(p.H * p.W)}, opts.dtype(at::kByte));
    case Aux::Value:
    case Aux::Pre: return state_stack(p, n, opts);
    default: return at::empty({0}, opts);
  }
}

// What one backward step needs: the conv-weight gradient and d/du through convT.
std::tuple<at::Tensor, at::Tensor> conv_backward(const at::Tensor& g, const at::Tensor& input, const at::Tensor& K,
                                                 const Problem& p, bool input_grad) {
  auto grads = at::convolution_backward(g, input, K, std::nullopt, {1, 1}, {p.pad, p.pad}, {1, 1}, false, {0, 0}, 1,
                                        {input_grad, true, false});
  return {std::get<0>(grads), std::get<1>(grads)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ode_forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                           const at::Tensor& bias_in, double h, c10::string_view layer,
                                                           c10::string_view activation, int64_t checkpoint,
                                                           c10::string_view norm) {
  const c10::DeviceGuard device(x_in.device());  // x's GPU current for the passes and ATen's convolutions
  const Problem p = check_inputs(x_in, weight_in, bias_in, h, layer, activation, checkpoint, norm);
  const at::Tensor x = x_in.contiguous(kLayout), K = weight_in.contiguous(), b = bias_in.contiguous();
  const auto opts = x.options();
  // The output keeps the input's layout; the last step writes into it directly when that is the internal one.
  const at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Preserve);
  const at::Tensor last = out.is_contiguous(kLayout) ? out : at::empty_like(x);
  at::Tensor states = state_stack(p, n_saved_states(p), opts);
  const bool keep_aux = p.checkpoint == 0;
  at::Tensor aux = keep_aux ? aux_buffer(p, p.n_steps, opts) : at::empty({0}, opts);
  if (x.numel() == 0) return {out, states, aux};

  std::array<at::Tensor, 2> scratch;  // ping-pong for the states a checkpointed forward does not keep
  at::Tensor u = x;
  for (int64_t k = 0; k < p.n_steps; ++k) {
    at::Tensor next;
    if (k + 1 == p.n_steps) next = last;
    else if (is_stored(p, k + 1)) next = states[state_slot(p, k + 1)];
    else {
      at::Tensor& s = scratch[k % 2];
      if (!s.defined()) s = at::empty_like(x);
      next = s;
    }
    const bool aux_k = keep_aux && p.aux != Aux::None;
    step_forward(u, K[k], b[k], p, keep_aux ? p.aux : Aux::None, next, aux_k ? aux[k] : at::Tensor());
    u = next;
  }
  if (!last.is_same(out)) out.copy_(last);
  return {out, states, aux};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ode_backward(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                            const at::Tensor& weight_in, const at::Tensor& bias_in,
                                                            const at::Tensor& states, const at::Tensor& aux_in,
                                                            double h, c10::string_view layer,
                                                            c10::string_view activation, int64_t checkpoint,
                                                            c10::string_view norm) {
  const c10::DeviceGuard device(x_in.device());  // x's GPU current for the passes and ATen's convolutions
  const Problem p = check_inputs(x_in, weight_in, bias_in, h, layer, activation, checkpoint, norm);
  TORCH_CHECK_VALUE(grad_out.sizes() == x_in.sizes(), "contres: grad_out must have x's shape ", x_in.sizes(),
                    ", got ", grad_out.sizes());
  TORCH_CHECK_VALUE(states.dim() == 5 && states.size(0) == n_saved_states(p),
                    "contres: states do not match n_steps and checkpoint; pass the forward's outputs unchanged");
  const at::Tensor x = x_in.contiguous(kLayout), K = weight_in.contiguous();
  const at::Tensor lam0 = grad_out.to(x.scalar_type()).contiguous(kLayout);
  at::Tensor grad_w = at::empty_like(K, at::MemoryFormat::Contiguous);
  at::Tensor grad_b = at::empty_like(bias_in, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) {
    grad_w.zero_();
    grad_b.zero_();
    return {at::zeros_like(x_in, at::MemoryFormat::Preserve), grad_w, grad_b};
  }
  const at::Tensor b = bias_in.contiguous();

  at::Tensor lam = lam0;  // dL/du_{k+1}, read-only until replaced by a buffer of our own
  at::Tensor gi;          // convT(g_{k+1}, K_{k+1}) not yet added to lam
  at::Tensor g_buffer;    // g of the single layer: dead once its step's convolution backward has run
  auto backward_step = [&](int64_t k, const at::Tensor& u, const at::Tensor& aux_k) {
    if (p.layer == Layer::Single) {
      // v = lam + gi (in place in gi), g = h act'(z_k) v (through the tv normalisation with norm "tv"): one
      // pass, which on CUDA also reduces the bias gradient.
      if (!g_buffer.defined()) g_buffer = at::empty_like(u);
      const at::Tensor& g = g_buffer;
      adjoint_gate(lam, gi, aux_k, p, p.h, gi, g, grad_b[k], at::Tensor());
      if (gi.defined()) lam = gi;
      auto [gi_k, dK] = conv_backward(g, u, K[k], p, true);
      grad_w[k].copy_(dK);
      gi = gi_k.contiguous(kLayout);
      return;
    }
    if (gi.defined()) lam = gi.add_(lam);
    // q = conv(lam, K_k); g = -h act'(z_k) q in place: one pass, as above.
    at::Tensor g = conv(lam, K[k], std::nullopt, p);
    const at::Tensor a = p.tv ? at::empty_like(g) : aux_k;  // act(n_k), recomputed by the tv pass, or kept
    adjoint_gate(g, at::Tensor(), aux_k, p, -p.h, at::Tensor(), g, grad_b[k], p.tv ? a : at::Tensor());
    auto [gi_k, dK_conv] = conv_backward(g, u, K[k], p, true);
    auto [unused, dK_convT] = conv_backward(a, lam, K[k], p, false);
    at::Tensor grad_w_k = grad_w[k];
    at::add_out(grad_w_k, dK_conv, dK_convT, -p.h);
    gi = gi_k.contiguous(kLayout);
  };

  if (p.checkpoint == 0) {
    for (int64_t k = p.n_steps - 1; k >= 0; --k) {
      const at::Tensor u = k == 0 ? x : states[state_slot(p, k)];
      backward_step(k, u, p.aux == Aux::None ? at::Tensor() : aux_in[k]);
    }
  } else {
    // Recompute each segment [c, c + s) forward from its saved state, then run its backward steps.
    const int64_t s = p.checkpoint;
    const int64_t seg_len = std::min(s, p.n_steps);  // a stride beyond n_steps is one segment
    const auto opts = x.options();
    at::Tensor seg_states = state_stack(p, seg_len - 1, opts);
    at::Tensor seg_aux = aux_buffer(p, seg_len, opts);
    const int64_t last_start = ((p.n_steps - 1) / s) * s;
    for (int64_t c = last_start; c >= 0; c -= s) {
      const int64_t end = std::min(c + s, p.n_steps);
      std::vector<at::Tensor> u(end - c);
      u[0] = c == 0 ? x : states[state_slot(p, c)];
      for (int64_t k = c; k < end; ++k) {
        const at::Tensor next = k + 1 < end ? seg_states[k - c] : at::Tensor();
        step_forward(u[k - c], K[k], b[k], p, p.aux, next, p.aux == Aux::None ? at::Tensor() : seg_aux[k - c]);
        if (next.defined()) u[k + 1 - c] = next;
      }
      for (int64_t k = end - 1; k >= c; --k)
        backward_step(k, u[k - c], p.aux == Aux::None ? at::Tensor() : seg_aux[k - c]);
    }
  }
  gi.add_(lam);
  const at::Tensor grad_x = at::empty_like(x_in, at::MemoryFormat::Preserve);
  if (gi.strides() == grad_x.strides()) return {gi, grad_w, grad_b};
  grad_x.copy_(gi);
  return {grad_x, grad_w, grad_b};
}

}  // namespace contres
