#include "saved.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "chain.h"
#include "cpu/buffer_pool.h"

namespace contres {

namespace {

// The stages a layer name stands for: a preset's (a norm stage after the conv when norm is not "none"), or a chain
// of stage names joined by commas.
std::vector<Stage> parse_stages(c10::string_view layer, Norm norm) {
  std::vector<Stage> stages;
  if (layer == "single" || layer == "double_sym") {
    stages.push_back(Stage::Conv);
    if (norm != Norm::None) stages.push_back(Stage::Norm);
    stages.push_back(Stage::Act);
    if (layer == "double_sym") stages.push_back(Stage::ConvT), stages.push_back(Stage::Neg);
    return stages;
  }
  const std::string text(layer);
  TORCH_CHECK_VALUE(!text.empty(), "contres: layer is an empty chain; a chain needs at least one conv stage");
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string name = text.substr(begin, end - begin);
    bool known = false;
    for (size_t i = 0; i < Names<Stage>::all.size() && !known; ++i)
      if (name == Names<Stage>::all[i]) stages.push_back(static_cast<Stage>(i)), known = true;
    TORCH_CHECK_VALUE(known, "contres: layer must be one of single, double_sym, or a chain of the stages conv, "
                      "conv_t, bias, norm, act, neg joined by commas; got '", text, "' (unknown stage '", name, "')");
    begin = end + 1;
  }
  return stages;
}

}  // namespace

Config parse_config(c10::string_view method, c10::string_view layer, c10::string_view activation,
                    c10::string_view norm, c10::string_view memory, int64_t checkpoint, NormOptions norm_options,
                    bool time_channel) {
  Config cfg;
  cfg.method = parse<Method>(method);
  cfg.act = parse<Act>(activation);
  cfg.norm = parse<Norm>(norm);
  cfg.stages = parse_stages(layer, cfg.norm);
  cfg.layer = Layer::Chain;
  for (const Layer preset : {Layer::Single, Layer::DoubleSym})
    if (cfg.stages == parse_stages(name_of(preset), cfg.norm)) cfg.layer = preset;
  cfg.memory = parse<Memory>(memory);
  TORCH_CHECK_VALUE(checkpoint >= 0, "contres: checkpoint must be >= 0, got ", checkpoint);
  cfg.checkpoint = checkpoint;
  if (norm_options.eps == 0) norm_options.eps = default_norm_eps(cfg.norm);
  TORCH_CHECK_VALUE(std::isfinite(norm_options.eps) && norm_options.eps > 0, "contres: norm_eps must be a positive "
                    "finite number, got ", norm_options.eps);
  TORCH_CHECK_VALUE(norm_options.groups >= 0, "contres: norm_groups must be >= 1 (or 0: min(32, width)), got ",
                    norm_options.groups);
  TORCH_CHECK_VALUE(norm_options.groups == 0 || cfg.norm == Norm::Group, "contres: norm_groups applies to "
                    "norm='group' only, got norm_groups=", norm_options.groups, " with norm='", name_of(cfg.norm), "'");
  TORCH_CHECK_VALUE(!norm_options.affine || cfg.norm != Norm::None, "contres: norm_affine needs a norm; norm is 'none'");
  cfg.norm_options = norm_options;
  cfg.time_channel = time_channel;
  if (cfg.memory == Memory::Reversible) {
    TORCH_CHECK_VALUE(cfg.method == Method::Leapfrog, "contres: memory='reversible' needs method='leapfrog' (the "
                      "only reversible integrator), got method='", name_of(cfg.method), "'");
    TORCH_CHECK_VALUE(checkpoint == 0, "contres: memory='reversible' keeps no intermediate states, so it takes no "
                      "checkpoint stride; got checkpoint=", checkpoint);
  }
  TORCH_CHECK_VALUE(cfg.memory != Memory::None || checkpoint == 0, "contres: memory='none' keeps no states, so it "
                    "takes no checkpoint stride; got checkpoint=", checkpoint);
  return cfg;
}

SavedCounts saved_counts(const Config& cfg, const Plan& plan, int64_t n_steps) {
  SavedCounts c;
  if (cfg.memory == Memory::None) return c;  // inference: no backward will read anything
  if (cfg.memory == Memory::Reversible) {  // u_{N-1} and u_N: the backward walks back from them
    c.states = 2;
    return c;
  }
  if (cfg.checkpoint > 0) {  // u_s, u_2s, ... (leapfrog: with the state before each, when s > 1)
    const int64_t points = (n_steps - 1) / cfg.checkpoint;
    c.states = cfg.method == Method::Leapfrog && cfg.checkpoint > 1 ? 2 * points : points;
    return c;
  }
  // u_1 .. u_{N-1}, and rk4's stage inputs u_k + h/2 k1, u_k + h/2 k2, u_k + h k3 of every step
  c.states = n_steps - 1 + (cfg.method == Method::Rk4 ? 3 * n_steps : 0);
  c.aux = plan.slots.empty() ? 0 : stages_per_step(cfg.method) * n_steps;
  return c;
}

// (n, B, C, H, W) viewing a contiguous (n, B, H, W, C) block.
TensorSpec state_stack_spec(int64_t n, const Dims& d, at::ScalarType dtype, const c10::SymInt& width) {
  const c10::SymInt pixel = width, row = d.W * width, image = d.H * d.W * width, batch = d.B * image;
  return {{n, d.B, width, d.H, d.W}, {batch, image, 1, row, pixel}, dtype};
}
TensorSpec state_stack_spec(int64_t n, const Dims& d, at::ScalarType dtype) {
  return state_stack_spec(n, d, dtype, d.C);
}

at::ScalarType states_dtype(const Config& cfg, const Plan& plan, Dtypes dtypes) {
  const bool full = cfg.checkpoint == 0 && cfg.memory == Memory::States;
  return full && plan.input_is_conv_input() ? dtypes.conv : dtypes.state;
}

at::ScalarType stats_dtype(Dtypes dtypes) { return dtypes.state == at::kDouble ? at::kDouble : at::kFloat; }

TensorSpec states_spec(const Config& cfg, const Plan& plan, const Dims& d, Dtypes dtypes) {
  return state_stack_spec(saved_counts(cfg, plan, d.n_steps).states, d, states_dtype(cfg, plan, dtypes));
}

std::vector<TensorSpec> aux_specs(const Config& cfg, const Plan& plan, const Dims& d, Dtypes dtypes) {
  return aux_stack_specs(plan, saved_counts(cfg, plan, d.n_steps).aux, d, dtypes);
}

TensorSpec slot_stack_spec(const SlotSpec& slot, int64_t n, const Dims& d, Dtypes dtypes) {
  const c10::SymInt& width = slot.width;
  switch (slot.kind) {
    case Aux::Mask: {
      const c10::SymInt bytes = (d.B * d.H * d.W * width + 7) / 8;
      return {{n, bytes}, {bytes, 1}, at::kByte};
    }
    case Aux::Value: return state_stack_spec(n, d, dtypes.conv, width);
    case Aux::Pre: {
      const c10::SymInt image = d.H * d.W * width;
      return {{n, d.B, d.H, d.W, width}, {d.B * image, image, d.W * width, width, 1}, dtypes.conv};
    }
    case Aux::Stats: return {{n, d.B, slot.groups, 2}, {d.B * slot.groups * 2, slot.groups * 2, 2, 1}, stats_dtype(dtypes)};
    case Aux::None: break;
  }
  TORCH_CHECK(false, "contres: internal error: a kept slot of kind ", name_of(slot.kind));
}

std::vector<TensorSpec> aux_stack_specs(const Plan& plan, int64_t n, const Dims& d, Dtypes dtypes) {
  std::vector<TensorSpec> specs;
  if (n == 0) return specs;
  for (const SlotSpec& slot : plan.slots) specs.push_back(slot_stack_spec(slot, n, d, dtypes));
  return specs;
}

std::vector<at::Tensor> allocate(const std::vector<TensorSpec>& specs, const at::TensorOptions& options) {
  std::vector<at::Tensor> out;
  for (const TensorSpec& spec : specs) out.push_back(allocate(spec, options));
  return out;
}

at::Tensor allocate(const TensorSpec& spec, const at::TensorOptions& options) {
  const auto opts = options.dtype(spec.dtype);
  if (opts.device().is_meta()) return at::empty_strided_symint(spec.sizes, spec.strides, opts);
  std::vector<int64_t> sizes, strides;
  int64_t numel = 1;
  for (const auto& s : spec.sizes) {
    sizes.push_back(s.expect_int());
    numel *= sizes.back();
  }
  for (const auto& s : spec.strides) strides.push_back(s.expect_int());
  if (!opts.device().is_cpu()) return at::empty_strided(sizes, strides, opts);
  // The specs are dense: one block of numel elements, viewed with the spec's strides.
  return pooled_empty_cpu({numel}, opts).as_strided(sizes, strides);
}

void check_matches(const at::Tensor& t, const TensorSpec& spec, const c10::Device& device, const char* name,
                   const char* what) {
  TORCH_CHECK(t.defined(), "contres: ", name, " is undefined; expected ", what);
  const auto sizes = t.sym_sizes();
  bool same_sizes = sizes.size() == spec.sizes.size();
  for (size_t i = 0; same_sizes && i < sizes.size(); ++i) same_sizes = sizes[i] == spec.sizes[i];
  TORCH_CHECK_VALUE(same_sizes, "contres: ", name, " must be ", what, ": sizes ", describe(spec.sizes), ", got ",
                    describe(t.sym_sizes()));
  TORCH_CHECK_TYPE(t.scalar_type() == spec.dtype, "contres: ", name, " must be ", what, " of dtype ",
                   c10::toString(spec.dtype), ", got ", c10::toString(t.scalar_type()));
  TORCH_CHECK(t.device() == device, "contres: ", name, " must be on ", device.str(), " like x, got ", t.device().str());
  const auto strides = t.sym_strides();
  bool same_strides = true;  // a dimension of length 1 (or an empty tensor) is addressed whatever its stride
  if (t.sym_numel() != 0)
    for (size_t i = 0; i < strides.size(); ++i)
      if (sizes[i] != 1 && strides[i] != spec.strides[i]) same_strides = false;
  TORCH_CHECK_VALUE(same_strides, "contres: ", name, " must be ", what, " with the forward's memory layout: strides ",
                    describe(spec.strides), ", got ", describe(t.sym_strides()),
                    " (pass the tensors the forward returned, unchanged)");
}

}  // namespace contres
