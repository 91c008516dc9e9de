#include "saved.h"

#include <ATen/ATen.h>

#include "cpu/buffer_pool.h"

namespace contres {

Config parse_config(c10::string_view method, c10::string_view layer, c10::string_view activation,
                    c10::string_view norm, c10::string_view memory, int64_t checkpoint) {
  Config cfg;
  cfg.method = parse<Method>(method);
  cfg.layer = parse<Layer>(layer);
  cfg.act = parse<Act>(activation);
  cfg.norm = parse<Norm>(norm);
  cfg.memory = parse<Memory>(memory);
  TORCH_CHECK_VALUE(checkpoint >= 0, "contres: checkpoint must be >= 0, got ", checkpoint);
  cfg.checkpoint = checkpoint;
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

SavedCounts saved_counts(const Config& cfg, int64_t n_steps) {
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
  c.aux = cfg.aux() == Aux::None ? 0 : stages_per_step(cfg.method) * n_steps;
  return c;
}

// (n, B, C, H, W) viewing a contiguous (n, B, H, W, C) block.
TensorSpec state_stack_spec(int64_t n, const Dims& d, at::ScalarType dtype) {
  const c10::SymInt pixel = d.C, row = d.W * d.C, image = d.H * d.W * d.C, batch = d.B * image;
  return {{n, d.B, d.C, d.H, d.W}, {batch, image, 1, row, pixel}, dtype};
}

at::ScalarType states_dtype(const Config& cfg, Dtypes dtypes) {
  const bool full = cfg.checkpoint == 0 && cfg.memory == Memory::States;
  return full ? dtypes.conv : dtypes.state;
}

TensorSpec states_spec(const Config& cfg, const Dims& d, Dtypes dtypes) {
  return state_stack_spec(saved_counts(cfg, d.n_steps).states, d, states_dtype(cfg, dtypes));
}

TensorSpec aux_spec(const Config& cfg, const Dims& d, Dtypes dtypes) {
  return aux_stack_spec(cfg.aux(), saved_counts(cfg, d.n_steps).aux, d, dtypes.conv);
}

TensorSpec aux_stack_spec(Aux kind, int64_t n, const Dims& d, at::ScalarType dtype) {
  if (n == 0 || kind == Aux::None) return {{0}, {1}, dtype};
  switch (kind) {
    case Aux::Mask: {
      const c10::SymInt bytes = (d.B * d.H * d.W * d.C + 7) / 8;
      return {{n, bytes}, {bytes, 1}, at::kByte};
    }
    case Aux::Value: return state_stack_spec(n, d, dtype);
    case Aux::Pre: {
      const c10::SymInt image = d.H * d.W * d.C;
      return {{n, d.B, d.H, d.W, d.C}, {d.B * image, image, d.W * d.C, d.C, 1}, dtype};
    }
    case Aux::None: break;
  }
  TORCH_CHECK(false, "contres: internal error: aux entries for aux kind ", name_of(kind));
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
