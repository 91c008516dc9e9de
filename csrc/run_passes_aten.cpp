// The chains' run passes (kernels.h) composed of ATen operations, on the device of their tensors: the CUDA path of
// the chains (no hand-written CUDA kernel of them has run on a GPU yet), and a second implementation the tests hold
// the CPU kernels against (contres._C._set_run_passes("aten")). Same operands and results, to rounding; every
// state-like operand is viewed as (B, pixels per sample, width) over its channels_last memory.
#include <ATen/ATen.h>

#include <vector>

#include "activations.h"
#include "kernels.h"

namespace contres {
namespace {

struct Rows {
  int64_t B, HW, W;
  at::Tensor operator()(const at::Tensor& t) const { return t.as_strided({B, HW, W}, {HW * W, W, 1}); }
};

Rows rows_of(const RunSpec& run, int64_t batch, const at::Tensor& like) {
  const int64_t W = run.width.expect_int(), B = batch;
  return {B, like.numel() / (B * W), W};
}

at::ScalarType opmath_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor activation(Act act, const at::Tensor& x) {
  switch (act) {
    case Act::Identity: return x;
    case Act::Relu: return at::relu(x);
    case Act::LeakyRelu: return at::leaky_relu(x, kLeakySlope);
    case Act::Tanh: return at::tanh(x);
    case Act::Sigmoid: return at::sigmoid(x);
    case Act::Softplus: return at::softplus(x, 1, kSoftplusThreshold);
  }
  TORCH_CHECK(false, "contres: internal error: activation code ", static_cast<int64_t>(act));
}

// The sign bits the Mask keeps of relu's and leaky_relu's input (Activation<A>::mask_bit).
at::Tensor sign_of(Act act, const at::Tensor& x) { return act == Act::Relu ? at::logical_not(x <= 0) : x > 0; }

// act' from the input x and output y (recomputed), PyTorch's backward's rounding (chain_kernels.cpp's rule).
at::Tensor activation_df(Act act, const at::Tensor& x, const at::Tensor& y) {
  switch (act) {
    case Act::Identity: return at::ones_like(x);
    case Act::Relu:
    case Act::LeakyRelu: {
      const at::Tensor low = at::full_like(x, act == Act::Relu ? 0.0 : kLeakySlope);
      return at::where(sign_of(act, x), at::ones_like(x), low);
    }
    case Act::Tanh: return 1 - y * y;
    case Act::Sigmoid: return y * (1 - y);
    case Act::Softplus: {
      const at::Tensor e = at::exp(x);
      return at::where(x > kSoftplusThreshold, at::ones_like(x), e / (e + 1));
    }
  }
  TORCH_CHECK(false, "contres: internal error: activation code ", static_cast<int64_t>(act));
}

at::Tensor pack_bits(const at::Tensor& bits) {  // bool, any shape -> Mask bytes of its flat order
  const int64_t n = bits.numel();
  at::Tensor flat = bits.reshape({-1}).to(at::kByte);
  if (n % 8) flat = at::cat({flat, at::zeros({8 - n % 8}, flat.options())});
  const at::Tensor weights = at::pow(2, at::arange(8, flat.options().dtype(at::kLong))).to(at::kByte);
  return (flat.view({-1, 8}) * weights).sum(1).to(at::kByte);
}

at::Tensor unpack_bits(const at::Tensor& bytes, int64_t n) {
  const at::Tensor shifts = at::arange(8, bytes.options().dtype(at::kLong));
  return at::bitwise_and(at::bitwise_right_shift(bytes.to(at::kLong).unsqueeze(1), shifts), 1)
      .reshape({-1})
      .narrow(0, 0, n)
      .to(at::kBool);
}

// Each step's input (xs[s]) and the run's output (xs.back()), with the norms' 1 / r (tv) or mean and 1 / std.
struct Forward {
  std::vector<at::Tensor> xs, inv_r, mean, rstd;
  at::Tensor act_input;
};

Forward recompute(const RunSpec& run, const Rows& v, const at::Tensor& in, const at::Tensor& tmap,
                  const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& stats, bool write_stats,
                  at::ScalarType op) {
  Forward f;
  at::Tensor x = v(in).to(op);
  if (tmap.defined()) x = x + tmap.view({1, v.HW, v.W});
  const size_t n = run.steps.size();
  f.inv_r.resize(n), f.mean.resize(n), f.rstd.resize(n);
  auto row = [&](int64_t param) { return params.at(param).to(op).view({1, 1, v.W}); };
  for (size_t s = 0; s < n; ++s) {
    const RunStep& step = run.steps[s];
    f.xs.push_back(x);
    switch (step.kind) {
      case Stage::Bias: x = x + row(step.param); break;
      case Stage::Neg: x = -x; break;
      case Stage::Act: f.act_input = x, x = activation(run.shape.act, x); break;
      case Stage::Norm:
        if (!step.grouped()) {
          f.inv_r[s] = (x * x).sum(-1, true).add(step.eps).rsqrt();
          x = x * f.inv_r[s];
        } else {
          const at::Tensor xg = x.view({v.B, v.HW, step.groups, v.W / step.groups});
          if (write_stats) {
            auto [var, mean] = at::var_mean(xg, at::IntArrayRef{1, 3}, /*correction=*/0, /*keepdim=*/true);
            f.mean[s] = mean, f.rstd[s] = (var + step.eps).rsqrt();
            stats[s].copy_(at::stack({mean.view({v.B, step.groups}), f.rstd[s].view({v.B, step.groups})}, -1));
          } else {
            f.mean[s] = stats[s].select(-1, 0).to(op).view({v.B, 1, step.groups, 1});
            f.rstd[s] = stats[s].select(-1, 1).to(op).view({v.B, 1, step.groups, 1});
          }
          x = ((xg - f.mean[s]) * f.rstd[s]).view({v.B, v.HW, v.W});
        }
        if (step.param >= 0) x = x * row(step.param) + row(step.param + 1);
        break;
      case Stage::Conv:
      case Stage::ConvT: TORCH_CHECK(false, "contres: internal error: a convolution inside a run");
    }
  }
  f.xs.push_back(x);
  return f;
}

}  // namespace

void run_forward_pass_aten(const RunForwardPass& a) {
  const RunSpec& run = *a.run;
  const Rows v = rows_of(run, a.batch, a.in);
  const at::ScalarType state = a.run->conv < 0 ? a.in.scalar_type() : a.comb.state_dtype(a.in.scalar_type());
  const at::ScalarType op = opmath_of(state);
  std::vector<at::Tensor> stats = a.stats;
  stats.resize(run.steps.size());
  const Forward f = recompute(run, v, a.in, a.time_map, a.params, stats, true, op);
  const at::Tensor& y = f.xs.back();
  if (a.keep.defined()) {
    switch (run.keep) {
      case Aux::Pre: v(a.keep).copy_(v(a.in)); break;
      case Aux::Value: v(a.keep).copy_(y); break;
      case Aux::Mask: a.keep.view({-1}).copy_(pack_bits(sign_of(run.shape.act, f.act_input))); break;
      default: TORCH_CHECK(false, "contres: internal error: a run keeps ", name_of(run.keep));
    }
  }
  if (a.out.defined()) v(a.out).copy_(y);
  const Combination& c = a.comb;
  if (c.out.defined() || c.out_low.defined()) {
    at::Tensor o = v(c.x0).to(op) * c.c0 + y * c.alpha;
    if (c.x1.defined()) o = o + v(c.x1).to(op) * c.c1;
    if (c.out2.defined()) v(c.out2).copy_(v(c.y0).to(op) + y * c.beta);  // before out, which may alias y0's
    if (c.out.defined()) v(c.out).copy_(o);
    if (c.out_low.defined()) v(c.out_low).copy_(o);
  } else if (c.out2.defined()) {
    v(c.out2).copy_(v(c.y0).to(op) + y * c.beta);
  }
}

void run_gate_pass_aten(const RunGatePass& a) {
  const RunSpec& run = *a.run;
  const Rows v = rows_of(run, a.batch, a.g);
  const bool last = a.lam.defined();
  const at::ScalarType state = last ? a.lam.scalar_type() : a.in.defined() && run.conv < 0 ? a.in.scalar_type()
                                                                                           : a.g.scalar_type();
  const at::ScalarType op = opmath_of(state);
  at::Tensor d;
  if (last) {
    d = v(a.lam).to(op);
    if (a.mu.defined()) d = d + v(a.mu).to(op) * a.c_mu;
    d = d * a.scale;
    if (a.sum_out.defined()) v(a.sum_out).copy_(v(a.sum_in.defined() ? a.sum_in : a.lam).to(op) + v(a.mu).to(op));
  } else {
    d = v(a.dy).to(op);
  }
  Forward f;
  if (a.in.defined()) f = recompute(run, v, a.in, a.time_map, a.params, a.stats, false, op);
  auto row = [&](int64_t param) { return a.params.at(param).to(op).view({1, 1, v.W}); };
  auto put = [&](int64_t param, const at::Tensor& value) {
    if (param < static_cast<int64_t>(a.param_grads.size()) && a.param_grads[param].defined())
      a.param_grads[param].copy_(value);
  };
  for (int64_t s = static_cast<int64_t>(run.steps.size()) - 1; s >= 0; --s) {
    const RunStep& step = run.steps[s];
    switch (step.kind) {
      case Stage::Bias: put(step.param, d.sum({0, 1})); break;
      case Stage::Neg: d = -d; break;
      case Stage::Act: {
        at::Tensor df;
        if (a.in.defined()) {
          df = activation_df(run.shape.act, f.xs[s], f.xs[s + 1]);
        } else if (run.keep == Aux::Value) {
          const at::Tensor y = v(a.kept).to(op);
          df = activation_df(run.shape.act, y, y);
        } else if (run.keep == Aux::Mask) {
          const at::Tensor bits = unpack_bits(a.kept.view({-1}), v.B * v.HW * v.W).view({v.B, v.HW, v.W});
          df = at::where(bits, at::ones_like(d), at::full_like(d, run.shape.act == Act::Relu ? 0.0 : kLeakySlope));
        }
        if (df.defined()) d = d * df;
        break;
      }
      case Stage::Norm: {
        const at::Tensor& x = f.xs[s];
        if (!step.grouped()) {
          const at::Tensor n = x * f.inv_r[s];
          if (step.param >= 0) {
            put(step.param, (d * n).sum({0, 1})), put(step.param + 1, d.sum({0, 1}));
            d = d * row(step.param);
          }
          d = (d - n * (n * d).sum(-1, true)) * f.inv_r[s];
        } else {
          const int64_t G = step.groups;
          const at::Tensor xhat = (x.view({v.B, v.HW, G, v.W / G}) - f.mean[s]) * f.rstd[s];
          at::Tensor dg = d.view({v.B, v.HW, G, v.W / G});
          if (step.param >= 0) {
            const at::Tensor xh = xhat.view({v.B, v.HW, v.W});
            put(step.param, (d * xh).sum({0, 1})), put(step.param + 1, d.sum({0, 1}));
            dg = (d * row(step.param)).view({v.B, v.HW, G, v.W / G});
          }
          const at::Tensor m1 = dg.mean({1, 3}, true), m2 = (dg * xhat).mean({1, 3}, true);
          d = (f.rstd[s] * (dg - m1 - xhat * m2)).view({v.B, v.HW, v.W});
        }
        break;
      }
      case Stage::Conv:
      case Stage::ConvT: TORCH_CHECK(false, "contres: internal error: a convolution inside a run");
    }
  }
  if (a.out.defined()) v(a.out).copy_(f.xs.back());
  if (a.conv_bias_grad.defined()) a.conv_bias_grad.copy_(d.sum({0, 1}));
  v(a.g).copy_(d);
}

}  // namespace contres
