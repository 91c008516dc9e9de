// The elementwise passes (kernels.h) as private ops, contres::_forward_pass, _gate_pass, _tv_forward_pass and
// _tv_gate_pass, on the device of their tensors, so that each pass can be unit-tested in every dtype pair against
// a formula (tests/test_passes.py) and timed alone (bench/cpu_passes.py). The blocks call the passes directly,
// never these. The arguments are the structs' fields, by name; undefined optionals are undefined tensors.
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <utility>

#include "kernels.h"

namespace contres {
namespace {

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

// The passes index their operands linearly: each must be a contiguous tensor on the first operand's device with
// the pass's element count (a Mask aux: its bytes), or a clear error comes instead of a read out of bounds.
struct Operands {
  c10::Device device;
  int64_t numel;

  void check(const at::Tensor& t, const char* name, int64_t count) const {
    if (!t.defined()) return;
    TORCH_CHECK_VALUE(t.device() == device && t.is_contiguous() && t.numel() == count, "contres: ", name,
                      " must be a contiguous tensor on ", device.str(), " of ", count, " elements");
  }
  void check(std::initializer_list<std::pair<const at::Tensor*, const char*>> operands) const {
    for (const auto& [t, name] : operands) check(*t, name, numel);
  }
  void check_channels(int64_t channels) const {
    TORCH_CHECK_VALUE(channels > 0 && numel % channels == 0, "contres: channels must divide the ", numel,
                      " elements, got ", channels);
  }
  void check_aux(const at::Tensor& aux, Aux kind) const {
    TORCH_CHECK_VALUE(aux.defined() == (kind != Aux::None), "contres: aux_kind '", name_of(kind),
                      aux.defined() ? "' takes no aux" : "' needs an aux");
    TORCH_CHECK_VALUE(kind != Aux::Pre, "contres: aux_kind 'pre' belongs to the tv passes");
    TORCH_CHECK_TYPE(kind != Aux::Mask || aux.scalar_type() == at::kByte, "contres: a mask aux must be uint8");
    check(aux, "aux", kind == Aux::Mask ? (numel + 7) / 8 : numel);
  }
  void check(const Combination& c) const {
    check({{&c.out, "out"}, {&c.x0, "x0"}, {&c.x1, "x1"}, {&c.out_low, "out_low"}, {&c.out2, "out2"}, {&c.y0, "y0"}});
    TORCH_CHECK_VALUE(!(c.out.defined() || c.out_low.defined()) || c.x0.defined(), "contres: out needs x0");
    TORCH_CHECK_VALUE(!c.out2.defined() || c.y0.defined(), "contres: out2 needs y0");
  }
};

Operands operands_like(const at::Tensor& first) { return {first.device(), first.numel()}; }

Combination combination(const std::optional<at::Tensor>& out, const std::optional<at::Tensor>& x0,
                        const std::optional<at::Tensor>& x1, double c0, double c1, double alpha,
                        const std::optional<at::Tensor>& out_low, const std::optional<at::Tensor>& out2,
                        const std::optional<at::Tensor>& y0, double beta) {
  Combination c;
  c.out = opt(out), c.x0 = opt(x0), c.x1 = opt(x1), c.c0 = c0, c.c1 = c1, c.alpha = alpha;
  c.out_low = opt(out_low), c.out2 = opt(out2), c.y0 = opt(y0), c.beta = beta;
  return c;
}

void forward_pass_op(const at::Tensor& z, c10::string_view activation, c10::string_view aux_kind,
                     const std::optional<at::Tensor>& aux, const std::optional<at::Tensor>& out,
                     const std::optional<at::Tensor>& x0, const std::optional<at::Tensor>& x1, double c0, double c1,
                     double alpha, const std::optional<at::Tensor>& out_low, const std::optional<at::Tensor>& out2,
                     const std::optional<at::Tensor>& y0, double beta) {
  ForwardPass p;
  p.z = z, p.act = parse<Act>(activation), p.aux_kind = parse<Aux>(aux_kind), p.aux = opt(aux);
  p.comb = combination(out, x0, x1, c0, c1, alpha, out_low, out2, y0, beta);
  const Operands ops = operands_like(z);
  ops.check(z, "z", ops.numel);
  ops.check(p.comb);
  ops.check_aux(p.aux, p.aux_kind);
#ifdef CONTRES_WITH_CUDA
  if (z.is_cuda()) return forward_pass_cuda(p);
#endif
  forward_pass_cpu(p);
}

// Returns whether the pass reduced the bias gradient (the CPU always does; CUDA for C % 8 == 0, aligned data).
bool gate_pass_op(const at::Tensor& lam, const std::optional<at::Tensor>& mu, double c_mu,
                  const std::optional<at::Tensor>& aux, c10::string_view activation, c10::string_view aux_kind,
                  double scale, const at::Tensor& g, const std::optional<at::Tensor>& sum_in,
                  const std::optional<at::Tensor>& sum_out, const std::optional<at::Tensor>& bias, int64_t channels) {
  GatePass p;
  p.lam = lam, p.mu = opt(mu), p.c_mu = c_mu, p.aux = opt(aux), p.act = parse<Act>(activation);
  p.aux_kind = parse<Aux>(aux_kind), p.scale = scale, p.g = g, p.sum_in = opt(sum_in), p.sum_out = opt(sum_out);
  p.bias = opt(bias), p.channels = channels;
  const Operands ops = operands_like(lam);
  ops.check({{&p.lam, "lam"}, {&p.mu, "mu"}, {&p.g, "g"}, {&p.sum_in, "sum_in"}, {&p.sum_out, "sum_out"}});
  ops.check_aux(p.aux, p.aux_kind);
  ops.check_channels(channels);
  ops.check(p.bias, "bias", channels);
#ifdef CONTRES_WITH_CUDA
  if (lam.is_cuda()) return gate_pass_cuda(p);
#endif
  return gate_pass_cpu(p);
}

void tv_forward_pass_op(const at::Tensor& z, int64_t channels, c10::string_view activation,
                        const std::optional<at::Tensor>& out, const std::optional<at::Tensor>& x0,
                        const std::optional<at::Tensor>& x1, double c0, double c1, double alpha,
                        const std::optional<at::Tensor>& out_low, const std::optional<at::Tensor>& out2,
                        const std::optional<at::Tensor>& y0, double beta, const std::optional<at::Tensor>& a_out,
                        const std::optional<at::Tensor>& z_keep) {
  TvForwardPass p;
  p.z = z, p.channels = channels, p.act = parse<Act>(activation);
  p.comb = combination(out, x0, x1, c0, c1, alpha, out_low, out2, y0, beta);
  p.a_out = opt(a_out), p.z_keep = opt(z_keep);
  const Operands ops = operands_like(z);
  ops.check(z, "z", ops.numel);
  ops.check(p.comb);
  ops.check({{&p.a_out, "a_out"}, {&p.z_keep, "z_keep"}});
  ops.check_channels(channels);
#ifdef CONTRES_WITH_CUDA
  if (z.is_cuda()) return tv_forward_pass_cuda(p);
#endif
  tv_forward_pass_cpu(p);
}

void tv_gate_pass_op(const at::Tensor& lam, const std::optional<at::Tensor>& mu, double c_mu, const at::Tensor& z,
                     int64_t channels, c10::string_view activation, double scale, const at::Tensor& g,
                     const std::optional<at::Tensor>& sum_in, const std::optional<at::Tensor>& sum_out,
                     const std::optional<at::Tensor>& a_out) {
  TvGatePass p;
  p.lam = lam, p.mu = opt(mu), p.c_mu = c_mu, p.z = z, p.channels = channels, p.act = parse<Act>(activation);
  p.scale = scale, p.g = g, p.sum_in = opt(sum_in), p.sum_out = opt(sum_out), p.a_out = opt(a_out);
  const Operands ops = operands_like(lam);
  ops.check({{&p.lam, "lam"}, {&p.mu, "mu"}, {&p.z, "z"}, {&p.g, "g"}, {&p.sum_in, "sum_in"}, {&p.sum_out, "sum_out"},
             {&p.a_out, "a_out"}});
  ops.check_channels(channels);
#ifdef CONTRES_WITH_CUDA
  if (lam.is_cuda()) return tv_gate_pass_cuda(p);
#endif
  tv_gate_pass_cpu(p);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(contres, m) {
  m.def(
      "_forward_pass(Tensor z, str activation, str aux_kind, Tensor(a!)? aux, Tensor(b!)? out, Tensor? x0,"
      " Tensor? x1, float c0, float c1, float alpha, Tensor(c!)? out_low, Tensor(d!)? out2, Tensor? y0,"
      " float beta) -> ()");
  m.def(
      "_gate_pass(Tensor lam, Tensor? mu, float c_mu, Tensor? aux, str activation, str aux_kind, float scale,"
      " Tensor(a!) g, Tensor? sum_in, Tensor(b!)? sum_out, Tensor(c!)? bias, int channels) -> bool");
  m.def(
      "_tv_forward_pass(Tensor z, int channels, str activation, Tensor(a!)? out, Tensor? x0, Tensor? x1, float c0,"
      " float c1, float alpha, Tensor(b!)? out_low, Tensor(c!)? out2, Tensor? y0, float beta, Tensor(d!)? a_out,"
      " Tensor(e!)? z_keep) -> ()");
  m.def(
      "_tv_gate_pass(Tensor lam, Tensor? mu, float c_mu, Tensor z, int channels, str activation, float scale,"
      " Tensor(a!) g, Tensor? sum_in, Tensor(b!)? sum_out, Tensor(c!)? a_out) -> ()");
}

TORCH_LIBRARY_IMPL(contres, CPU, m) {
  m.impl("_forward_pass", &forward_pass_op);
  m.impl("_gate_pass", &gate_pass_op);
  m.impl("_tv_forward_pass", &tv_forward_pass_op);
  m.impl("_tv_gate_pass", &tv_gate_pass_op);
}

#ifdef CONTRES_WITH_CUDA
TORCH_LIBRARY_IMPL(contres, CUDA, m) {  // the CUDA passes: one dtype (S == L)
  m.impl("_forward_pass", &forward_pass_op);
  m.impl("_gate_pass", &gate_pass_op);
  m.impl("_tv_forward_pass", &tv_forward_pass_op);
  m.impl("_tv_gate_pass", &tv_gate_pass_op);
}
#endif

}  // namespace contres
