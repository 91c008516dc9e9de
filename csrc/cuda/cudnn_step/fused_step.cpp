// The ATen side of the fused step graphs: argument checks, the spec of each call, workspace, and the dispatch
// to the plan cache (plan_cache.h).
#include "fused_step.h"

#include <ATen/Context.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <array>
#include <atomic>
#include <initializer_list>
#include <optional>
#include <utility>

#include "../../describe.h"
#include "../precision.h"
#include "graph_spec.h"
#include "plan_cache.h"

namespace contres {
namespace cudnn_fusion {
namespace {

int sm_of(int device) {
  static std::array<std::atomic<int>, 64> cached{};  // 0: not asked yet
  if (device < 0 || device >= static_cast<int>(cached.size())) return 0;
  int sm = cached[device].load(std::memory_order_relaxed);
  if (sm == 0) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    sm = 10 * major + minor;
    cached[device].store(sm, std::memory_order_relaxed);
  }
  return sm;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// A state-sized operand: shape and device of ref, the given dtype (else an error); NHWC dense and 16-byte
// aligned (else the fused path cannot take it).
bool state_operand(const at::Tensor& t, const at::Tensor& ref, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.defined(), "contres cudnn_fusion: ", name, " is undefined");
  TORCH_CHECK(t.sizes() == ref.sizes(), "contres cudnn_fusion: ", name, " has shape ", describe(t.sizes()),
              ", expected ", describe(ref.sizes()));
  TORCH_CHECK(t.device() == ref.device(), "contres cudnn_fusion: ", name, " is on ", describe(t.device()),
              ", expected ", describe(ref.device()));
  TORCH_CHECK(t.scalar_type() == dtype, "contres cudnn_fusion: ", name, " has dtype ", describe(t.scalar_type()),
              ", expected ", describe(dtype));
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && aligned16(t);
}

bool filter_operand(const at::Tensor& K, const at::Tensor& u) {
  TORCH_CHECK(K.defined() && K.dim() == 4 && K.size(0) == u.size(1) && K.size(1) == u.size(1) &&
                  K.size(2) == K.size(3) && K.size(2) % 2 == 1,
              "contres cudnn_fusion: K must be (C, C, k, k) with C = ", u.size(1), " and odd k, got ",
              K.defined() ? describe(K.sizes()) : std::string("undefined"));
  TORCH_CHECK(K.device() == u.device() && K.scalar_type() == u.scalar_type(),
              "contres cudnn_fusion: K must have u's device and dtype");
  return K.is_contiguous(at::MemoryFormat::ChannelsLast) && aligned16(K);
}

bool vector_operand(const at::Tensor& v, const at::Tensor& u, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == u.size(1) && v.device() == u.device() && v.scalar_type() == dtype,
              "contres cudnn_fusion: ", name, " must be (", u.size(1), ") of dtype ", describe(dtype), " on ",
              describe(u.device()));
  return v.is_contiguous() && aligned16(v);
}

// Outputs may overlap no input, except `allowed` exactly (the elementwise epilogue reads each element of it
// before writing the same element).
void check_no_overlap(const at::Tensor& out, std::initializer_list<at::Tensor> inputs, const at::Tensor& allowed,
                      const char* name) {
  for (const auto& in : inputs) {
    if (!in.defined()) continue;
    const auto status = at::get_overlap_status(out, in);
    const bool ok = status == at::MemOverlapStatus::No ||
                    (allowed.defined() && in.is_same(allowed) && status == at::MemOverlapStatus::Full);
    TORCH_CHECK(ok, "contres cudnn_fusion: ", name, " overlaps an input it may not alias");
  }
}

GraphSpec spec_of(GraphKind kind, const at::Tensor& u, int64_t k) {
  GraphSpec s;
  s.kind = kind;
  s.dtype = u.scalar_type();
  s.B = u.size(0);
  s.C = u.size(1);
  s.H = u.size(2);
  s.W = u.size(3);
  s.k = k;
  s.tf32 = tf32_convolutions();
  s.deterministic = deterministic();
  return s;
}

// Finds (or builds) the plan and runs it on the current stream. bias_out, when given, is zeroed first:
// cuDNN's fused reduction may accumulate into its output.
bool run(const GraphSpec& spec, const at::Tensor& u, Operands ops, const at::Tensor& bias_out = {}) {
  if (!spec_problem(spec).empty()) return false;
  const c10::cuda::CUDAGuard guard(u.device());
  const int device = u.get_device();
  const int sm = sm_of(device);
  if (sm < 80) return false;
  // Building loads a module, which a capturing stream does not allow; warm up before capturing.
  const bool capturing = c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  const auto plan = find_plan(spec, device, sm, !capturing);
  if (!plan) return false;
  at::Tensor workspace;
  const int64_t ws = plan->workspace;
  if (ws > 0) workspace = at::empty({ws}, u.options().dtype(at::kByte));
  if (bias_out.defined()) bias_out.zero_();
  return execute(*plan, ops, ws > 0 ? workspace.data_ptr() : nullptr);
}

bool supported_dtype(const at::Tensor& u) {
  const auto t = u.scalar_type();
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// The leading operand of a graph (whose shape, device and dtype the others are checked against): anything else
// leaves the call to the ATen path.
bool fusable(const at::Tensor& in) { return in.defined() && in.is_cuda() && in.dim() == 4 && supported_dtype(in); }

// ConvAxpy and DgradAdd: out = add + alpha * (the graph's convolution of `in` with K). The names are the caller's.
bool run_with_addend(GraphKind kind, const at::Tensor& in, const at::Tensor& K, const at::Tensor& add, double alpha,
                     const at::Tensor& out, std::array<const char*, 3> names) {
  if (!fusable(in)) return false;
  const auto dt = in.scalar_type();
  bool ok = state_operand(in, in, dt, names[0]);
  ok &= filter_operand(K, in);
  ok &= state_operand(add, in, dt, names[1]);
  ok &= state_operand(out, in, dt, names[2]);
  check_no_overlap(out, {in, K, add}, add, names[2]);
  if (!ok) return false;
  auto s = spec_of(kind, in, K.size(2));
  s.scalar = alpha;
  Operands ops;
  ops.ptr[kIn] = in.data_ptr();
  ops.ptr[kFilter] = K.data_ptr();
  ops.ptr[kAdd] = add.data_ptr();
  ops.ptr[kOut] = out.data_ptr();
  return run(s, in, ops);
}

}  // namespace

bool supports(at::ScalarType dtype, int64_t C, int64_t kernel_size, Act act) {
  (void)act;  // every activation of activations.h has a fused form
  GraphSpec s;
  s.kind = GraphKind::DgradAdd;
  s.dtype = dtype;
  s.B = s.H = s.W = 1;
  s.C = C;
  s.k = kernel_size;
  if (!spec_problem(s).empty() || cudnnGetVersion() < 90000) return false;
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return sm_of(device) >= 80;  // runtime fusion with bf16 and these epilogues: Ampere and newer
}

bool run_forward_single(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, double h, Act act,
                        Aux kind, const at::Tensor& u_next, const at::Tensor& gate_out) {
  if (!fusable(u)) return false;
  const auto dt = u.scalar_type();
  bool ok = state_operand(u, u, dt, "u");
  ok &= filter_operand(K, u);
  ok &= vector_operand(b, u, dt, "b");
  ok &= state_operand(u_next, u, dt, "u_next");
  check_no_overlap(u_next, {u, K, b}, {}, "u_next");
  if (gate_out.defined()) {
    ok &= state_operand(gate_out, u, kind == Aux::Mask ? at::kByte : dt, "gate_out");
    check_no_overlap(gate_out, {u, K, b, u_next}, {}, "gate_out");
  }
  if (!ok) return false;
  auto s = spec_of(GraphKind::FwdSingle, u, K.size(2));
  s.act = act;
  s.gate = kind;
  s.gate_out = gate_out.defined();
  s.scalar = h;
  Operands ops;
  ops.ptr[kIn] = u.data_ptr();
  ops.ptr[kFilter] = K.data_ptr();
  ops.ptr[kBias] = b.data_ptr();
  ops.ptr[kOut] = u_next.data_ptr();
  if (gate_out.defined()) ops.ptr[kOut2] = gate_out.data_ptr();
  return run(s, u, ops);
}

bool run_conv_bias_act(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, Act act,
                       const at::Tensor& a_out) {
  if (!fusable(u)) return false;
  const auto dt = u.scalar_type();
  bool ok = state_operand(u, u, dt, "u");
  ok &= filter_operand(K, u);
  ok &= vector_operand(b, u, dt, "b");
  ok &= state_operand(a_out, u, dt, "a_out");
  check_no_overlap(a_out, {u, K, b}, {}, "a_out");
  if (!ok) return false;
  auto s = spec_of(GraphKind::ConvBiasAct, u, K.size(2));
  s.act = act;
  Operands ops;
  ops.ptr[kIn] = u.data_ptr();
  ops.ptr[kFilter] = K.data_ptr();
  ops.ptr[kBias] = b.data_ptr();
  ops.ptr[kOut] = a_out.data_ptr();
  return run(s, u, ops);
}

bool run_conv_axpy(const at::Tensor& v, const at::Tensor& K, const at::Tensor& base, double alpha,
                   const at::Tensor& y_out) {
  return run_with_addend(GraphKind::ConvAxpy, v, K, base, alpha, y_out, {"v", "base", "y_out"});
}

bool run_dgrad_gate(const at::Tensor& g, const at::Tensor& K, const at::Tensor& lam, const at::Tensor& gate, Act act,
                    Aux kind, double scale, const at::Tensor& lam_out, const at::Tensor& g_out,
                    const at::Tensor& bias_out) {
  if (!fusable(g)) return false;
  const auto dt = g.scalar_type();
  const bool reads_gate = act != Act::Identity && kind != Aux::None;
  bool ok = state_operand(g, g, dt, "g");
  ok &= filter_operand(K, g);
  ok &= state_operand(lam, g, dt, "lam");
  ok &= state_operand(lam_out, g, dt, "lam_out");
  ok &= state_operand(g_out, g, dt, "g_out");
  if (reads_gate) ok &= state_operand(gate, g, kind == Aux::Mask ? at::kByte : dt, "gate");
  if (bias_out.defined()) ok &= vector_operand(bias_out, g, at::kFloat, "bias_out");
  check_no_overlap(lam_out, {g, K, lam, gate}, lam, "lam_out");
  check_no_overlap(g_out, {g, K, lam, gate, lam_out}, {}, "g_out");
  if (bias_out.defined()) check_no_overlap(bias_out, {g, K, lam, gate, lam_out, g_out}, {}, "bias_out");
  if (!ok) return false;
  auto s = spec_of(GraphKind::DgradGate, g, K.size(2));
  s.act = act;
  s.gate = reads_gate ? kind : Aux::None;  // identity: act' = 1 whatever the gate
  s.bias_out = bias_out.defined();
  s.scalar = scale;
  Operands ops;
  ops.ptr[kIn] = g.data_ptr();
  ops.ptr[kFilter] = K.data_ptr();
  ops.ptr[kAdd] = lam.data_ptr();
  if (reads_gate) ops.ptr[kGate] = gate.data_ptr();
  ops.ptr[kOut] = lam_out.data_ptr();
  ops.ptr[kOut2] = g_out.data_ptr();
  if (bias_out.defined()) ops.ptr[kBiasOut] = bias_out.data_ptr();
  return run(s, g, ops, bias_out);
}

bool run_dgrad_add(const at::Tensor& g, const at::Tensor& K, const at::Tensor& lam, const at::Tensor& lam_out,
                   double alpha) {
  return run_with_addend(GraphKind::DgradAdd, g, K, lam, alpha, lam_out, {"g", "lam", "lam_out"});
}

bool run_conv_gate(const at::Tensor& v, const at::Tensor& K, const at::Tensor& gate, Act act, Aux kind,
                   double scale, const at::Tensor& g_out, const at::Tensor& bias_out) {
  if (!fusable(v)) return false;
  const auto dt = v.scalar_type();
  const bool reads_gate = act != Act::Identity && kind != Aux::None;
  bool ok = state_operand(v, v, dt, "v");
  ok &= filter_operand(K, v);
  ok &= state_operand(g_out, v, dt, "g_out");
  if (reads_gate) ok &= state_operand(gate, v, kind == Aux::Mask ? at::kByte : dt, "gate");
  if (bias_out.defined()) ok &= vector_operand(bias_out, v, at::kFloat, "bias_out");
  check_no_overlap(g_out, {v, K, gate}, {}, "g_out");
  if (bias_out.defined()) check_no_overlap(bias_out, {v, K, gate, g_out}, {}, "bias_out");
  if (!ok) return false;
  auto s = spec_of(GraphKind::ConvGate, v, K.size(2));
  s.act = act;
  s.gate = reads_gate ? kind : Aux::None;
  s.bias_out = bias_out.defined();
  s.scalar = scale;
  Operands ops;
  ops.ptr[kIn] = v.data_ptr();
  ops.ptr[kFilter] = K.data_ptr();
  if (reads_gate) ops.ptr[kGate] = gate.data_ptr();
  ops.ptr[kOut] = g_out.data_ptr();
  if (bias_out.defined()) ops.ptr[kBiasOut] = bias_out.data_ptr();
  return run(s, v, ops, bias_out);
}

bool run_wgrad(const at::Tensor& u, const at::Tensor& g, const at::Tensor& dK_out) {
  if (!fusable(u)) return false;
  const auto dt = u.scalar_type();
  TORCH_CHECK(dK_out.defined() && dK_out.dim() == 4 && dK_out.size(0) == u.size(1) && dK_out.size(1) == u.size(1) &&
                  dK_out.size(2) == dK_out.size(3) && dK_out.size(2) % 2 == 1 && dK_out.device() == u.device(),
              "contres cudnn_fusion: dK_out must be (C, C, k, k) with C = ", u.size(1), ", odd k, on ",
              describe(u.device()));
  TORCH_CHECK(dK_out.scalar_type() == at::kFloat || dK_out.scalar_type() == dt,
              "contres cudnn_fusion: dK_out must be float32 or ", describe(dt));
  const bool krsc = dK_out.is_contiguous(at::MemoryFormat::ChannelsLast);
  bool ok = state_operand(u, u, dt, "u");
  ok &= state_operand(g, u, dt, "g");
  ok &= (krsc || dK_out.is_contiguous()) && aligned16(dK_out);
  check_no_overlap(dK_out, {u, g}, {}, "dK_out");
  if (!ok) return false;
  auto s = spec_of(GraphKind::Wgrad, u, dK_out.size(2));
  s.out_dtype = dK_out.scalar_type();
  s.out_channels_last = krsc;
  Operands ops;
  ops.ptr[kIn] = u.data_ptr();
  ops.ptr[kDy] = g.data_ptr();
  ops.ptr[kOut] = dK_out.data_ptr();
  return run(s, u, ops);
}

}  // namespace cudnn_fusion
}  // namespace contres
