// Graph building of the fused step graphs: one frontend graph per GraphSpec (a convolution and its pointwise
// epilogue, which cuDNN's runtime-fusion engines compile into one kernel with NVRTC), and its build for the
// current device through the heuristics' first buildable plan.
#include <ATen/cudnn/Handle.h>

#include <string>
#include <vector>

#include "device_graph.h"
#include "frontend.h"

namespace contres {
namespace cudnn_fusion {
namespace {

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;
using fe::PointwiseMode_t;

fe::DataType_t fe_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return fe::DataType_t::FLOAT;
    case at::kHalf: return fe::DataType_t::HALF;
    case at::kBFloat16: return fe::DataType_t::BFLOAT16;
    case at::kByte: return fe::DataType_t::UINT8;
    default: return fe::DataType_t::NOT_SET;
  }
}

// Builds the graph of one spec. Operands get fixed UIDs (their Role + 1), so execution needs no tensor map.
class GraphMaker {
 public:
  explicit GraphMaker(const GraphSpec& spec) : s_(spec), g_(std::make_shared<fe::graph::Graph>()) {
    g_->set_io_data_type(fe_type(s_.dtype))
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
  }

  std::shared_ptr<fe::graph::Graph> make() {
    switch (s_.kind) {
      case GraphKind::FwdSingle: fwd_single(); break;
      case GraphKind::ConvBiasAct: output(kOut, act_of(z_of_conv())); break;
      case GraphKind::ConvAxpy: output(kOut, axpy(fprop(), s_.scalar, state(kAdd))); break;
      case GraphKind::DgradGate: dgrad_gate(); break;
      case GraphKind::DgradAdd: output(kOut, axpy(dgrad(), s_.scalar, state(kAdd))); break;
      case GraphKind::ConvGate: gate_and_bias(fprop(), kOut); break;
      case GraphKind::Wgrad: wgrad(); break;
    }
    return g_;
  }

 private:
  // (B, C, H, W) state-sized operand, NHWC packed; one tensor per role however often the graph reads it.
  TensorPtr state(Role role, at::ScalarType dtype = at::ScalarType::Undefined) {
    if (operands_[role]) return operands_[role];
    const int64_t C = s_.C, H = s_.H, W = s_.W;
    auto t = g_->tensor(fe::graph::Tensor_attributes()
                            .set_name(role_name(role))
                            .set_uid(role + 1)
                            .set_dim({s_.B, C, H, W})
                            .set_stride({C * H * W, 1, W * C, C}));
    if (dtype != at::ScalarType::Undefined) t->set_data_type(fe_type(dtype));
    return operands_[role] = t;
  }
  // (C, C, k, k) kernel in KRSC.
  TensorPtr filter() {
    const int64_t C = s_.C, k = s_.k;
    return g_->tensor(fe::graph::Tensor_attributes()
                          .set_name("K")
                          .set_uid(kFilter + 1)
                          .set_dim({C, C, k, k})
                          .set_stride({C * k * k, 1, k * C, C}));
  }
  TensorPtr bias() {
    const int64_t C = s_.C;
    return g_->tensor(
        fe::graph::Tensor_attributes().set_name("b").set_uid(kBias + 1).set_dim({1, C, 1, 1}).set_stride({C, 1, C, C}));
  }
  void output(Role role, const TensorPtr& t, at::ScalarType dtype = at::ScalarType::Undefined) {
    t->set_output(true).set_name(role_name(role)).set_uid(role + 1);
    if (dtype != at::ScalarType::Undefined) t->set_data_type(fe_type(dtype));
  }
  static const char* role_name(Role role) {
    static const char* names[kNumRoles] = {"in", "K", "b", "add", "gate", "dy", "out", "out2", "bias_grad"};
    return names[role];
  }

  TensorPtr scalar(float v) { return g_->tensor(v); }
  TensorPtr pw(PointwiseMode_t mode, const TensorPtr& a) {
    return g_->pointwise(a, fe::graph::Pointwise_attributes().set_mode(mode));
  }
  TensorPtr pw(PointwiseMode_t mode, const TensorPtr& a, const TensorPtr& b) {
    return g_->pointwise(a, b, fe::graph::Pointwise_attributes().set_mode(mode));
  }
  TensorPtr compare(PointwiseMode_t mode, const TensorPtr& a, float v) {
    auto c = pw(mode, a, scalar(v));
    c->set_data_type(fe::DataType_t::BOOLEAN);
    return c;
  }

  // Stride 1, padding k / 2: the state keeps its shape.
  template <typename Attributes>
  Attributes conv_attributes() const {
    const int64_t p = s_.k / 2;
    return Attributes().set_padding({p, p}).set_stride({1, 1}).set_dilation({1, 1});
  }
  TensorPtr fprop() {
    return g_->conv_fprop(state(kIn), filter(), conv_attributes<fe::graph::Conv_fprop_attributes>());
  }
  TensorPtr z_of_conv() { return pw(PointwiseMode_t::ADD, fprop(), bias()); }
  TensorPtr dgrad() {
    const int64_t C = s_.C, H = s_.H, W = s_.W;
    auto d = g_->conv_dgrad(state(kIn), filter(), conv_attributes<fe::graph::Conv_dgrad_attributes>());
    d->set_dim({s_.B, C, H, W}).set_stride({C * H * W, 1, W * C, C});
    return d;
  }
  // base + alpha * x, with the multiplication left out when alpha is 1.
  TensorPtr axpy(const TensorPtr& x, double alpha, const TensorPtr& base) {
    const auto ax = alpha == 1.0 ? x : pw(PointwiseMode_t::MUL, x, scalar(static_cast<float>(alpha)));
    return pw(PointwiseMode_t::ADD, ax, base);
  }

  // The mask byte, activations.h's mask_bit(z), from a = act(z): relu !(z <= 0), which is a != 0 (relu(z) >= 0;
  // a NaN z gives a NaN a, and NaN != 0); leaky_relu z > 0, which is a > 0.
  TensorPtr positive(const TensorPtr& a) {
    return compare(s_.act == Act::Relu ? PointwiseMode_t::CMP_NEQ : PointwiseMode_t::CMP_GT, a, 0.f);
  }
  // act(z) as activations.h defines it. cuDNN's RELU_FWD (with the lower slope for leaky_relu) is built with
  // NaN propagation by the frontend, so a NaN z passes through as in torch.relu and leaky_relu.
  TensorPtr act_of(const TensorPtr& z) {
    switch (s_.act) {
      case Act::Identity: return z;
      case Act::Relu: return pw(PointwiseMode_t::RELU_FWD, z);
      case Act::LeakyRelu:
        return g_->pointwise(z, fe::graph::Pointwise_attributes()
                                    .set_mode(PointwiseMode_t::RELU_FWD)
                                    .set_relu_lower_clip_slope(static_cast<float>(kLeakySlope)));
      case Act::Tanh: return pw(PointwiseMode_t::TANH_FWD, z);
      case Act::Sigmoid: return pw(PointwiseMode_t::SIGMOID_FWD, z);
    }
    return z;
  }
  // g = scale * act' * v, act' read from the gate operand. tanh and sigmoid: (scale * act') * v, the order of
  // the elementwise passes. relu and leaky_relu: cuDNN's RELU_BWD on the gate (v where gate > 0, else slope * v),
  // for a mask byte (0/1) and for a = act(z) alike (a > 0 exactly where z > 0), times scale. Where act' is 0 this
  // gives 0 even for an infinite v, as torch's threshold_backward does (the passes give NaN there); and unlike a
  // compare-and-select it compiles in runtime fusion's non-tensor-core engine (true float32).
  TensorPtr scaled_gate(const TensorPtr& v) {
    const auto scale = scalar(static_cast<float>(s_.scalar));
    if (s_.act == Act::Identity || s_.gate == Aux::None) return pw(PointwiseMode_t::MUL, v, scale);
    const auto gate = state(kGate, s_.gate == Aux::Mask ? at::kByte : s_.dtype);
    if (s_.act == Act::Relu || s_.act == Act::LeakyRelu) {
      auto attrs = fe::graph::Pointwise_attributes().set_mode(PointwiseMode_t::RELU_BWD);
      if (s_.act == Act::LeakyRelu) attrs.set_relu_lower_clip_slope(static_cast<float>(kLeakySlope));
      return pw(PointwiseMode_t::MUL, g_->pointwise(v, gate, attrs), scale);
    }
    const auto one = scalar(1.f);
    const auto d = s_.act == Act::Tanh ? pw(PointwiseMode_t::SUB, one, pw(PointwiseMode_t::MUL, gate, gate))
                                       : pw(PointwiseMode_t::MUL, gate, pw(PointwiseMode_t::SUB, one, gate));
    return pw(PointwiseMode_t::MUL, pw(PointwiseMode_t::MUL, d, scale), v);
  }

  void fwd_single() {
    const auto z = z_of_conv();
    const auto a = act_of(z);
    output(kOut, pw(PointwiseMode_t::ADD, pw(PointwiseMode_t::MUL, a, scalar(static_cast<float>(s_.scalar))),
                    state(kIn)));
    if (!s_.gate_out) return;
    if (s_.gate == Aux::Mask)
      output(kOut2, positive(a), at::kByte);
    else
      output(kOut2, a);
  }
  // g = scale * act' * v to `role`, and its sum over (B, H, W) to kBiasOut when asked for.
  void gate_and_bias(const TensorPtr& v, Role role) {
    const auto g = scaled_gate(v);
    output(role, g);
    if (!s_.bias_out) return;
    auto sum = g_->reduction(g, fe::graph::Reduction_attributes()
                                    .set_mode(fe::ReductionMode_t::ADD)
                                    .set_compute_data_type(fe::DataType_t::FLOAT)
                                    .set_is_deterministic(s_.deterministic));
    const int64_t C = s_.C;
    sum->set_dim({1, C, 1, 1}).set_stride({C, 1, C, C});
    output(kBiasOut, sum, at::kFloat);
  }
  void dgrad_gate() {
    const auto lam_out = pw(PointwiseMode_t::ADD, dgrad(), state(kAdd));
    output(kOut, lam_out);
    gate_and_bias(lam_out, kOut2);
  }
  void wgrad() {
    const int64_t C = s_.C, k = s_.k;
    auto dK = g_->conv_wgrad(state(kDy), state(kIn), conv_attributes<fe::graph::Conv_wgrad_attributes>());
    dK->set_dim({C, C, k, k});
    if (s_.out_channels_last)
      dK->set_stride({C * k * k, 1, k * C, C});
    else
      dK->set_stride({C * k * k, k * k, k, 1});
    output(kOut, dK, s_.out_dtype);
  }

  const GraphSpec& s_;
  std::shared_ptr<fe::graph::Graph> g_;
  TensorPtr operands_[kNumRoles];
};

#define CONTRES_FE_TRY(stage, call)                                                 \
  do {                                                                              \
    auto status_ = (call);                                                          \
    if (!status_.is_good()) return std::string(stage) + ": " + status_.get_message(); \
  } while (0)

// Builds graph for the current device. Empty when it worked, else what failed.
std::string build_on_device(fe::graph::Graph& graph, const GraphSpec& spec, int sm) {
  const cudnnHandle_t handle = at::native::getCudnnHandle();  // bound to the current stream by ATen
  graph.set_sm_version(sm);
  CONTRES_FE_TRY("validate", graph.validate());
  CONTRES_FE_TRY("operation graph", graph.build_operation_graph(handle));
  CONTRES_FE_TRY("heuristics", graph.create_execution_plans(heuristics()));
  deselect_engines(graph, spec);
  CONTRES_FE_TRY("check_support", graph.check_support());
  CONTRES_FE_TRY("build", graph.build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE));
  return {};
}

}  // namespace

std::shared_ptr<fe::graph::Graph> make_graph(const GraphSpec& spec) { return GraphMaker(spec).make(); }

// Engines whose numerics the spec does not allow: inputs converted to a narrower type and reductions in a
// narrower type always (the compute type is float); TF32 tensor cores for float32 when TF32 is off; atomics-based
// (nondeterministic) engines when determinism is asked for.
void deselect_engines(fe::graph::Graph& graph, const GraphSpec& spec) {
  std::vector<fe::NumericalNote_t> barred = {fe::NumericalNote_t::DOWN_CONVERT_INPUTS,
                                             fe::NumericalNote_t::REDUCED_PRECISION_REDUCTION};
  if (spec.dtype == at::kFloat && !spec.tf32) barred.push_back(fe::NumericalNote_t::TENSOR_CORE);
  if (spec.deterministic) barred.push_back(fe::NumericalNote_t::NONDETERMINISTIC);
  graph.deselect_numeric_notes(barred);
}

const std::vector<fe::HeurMode_t>& heuristics() {
  static const std::vector<fe::HeurMode_t> modes = {fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK};
  return modes;
}

BuiltGraph build_graph(const GraphSpec& spec, int sm) {
  BuiltGraph out;
  try {
    auto graph = make_graph(spec);
    out.error = build_on_device(*graph, spec, sm);
    if (out.error.empty() && !graph->get_plan_name(out.engine).is_good()) out.error = "no plan name";
    if (out.error.empty() && !graph->get_workspace_size(out.workspace).is_good()) out.error = "no workspace size";
    if (out.error.empty()) out.graph = std::make_shared<DeviceGraph>(DeviceGraph{std::move(graph)});
  } catch (const std::exception& e) {  // the frontend's descriptor builders throw on backend errors
    out.error = e.what();
  }
  return out;
}

}  // namespace cudnn_fusion
}  // namespace contres
