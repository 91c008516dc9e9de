#include "controls.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

#include "methods.h"

namespace contres {

Interpolation::Interpolation(Interp interp, Method method, int64_t n_steps, int64_t n_controls)
    : interp_(interp),
      n_controls_(n_controls),
      q_(method == Method::Rk4 ? 2 * n_steps : n_steps),
      n_rows_(interp == Interp::None ? n_controls : stage_times(method, n_steps)) {}

RowMix Interpolation::row(int64_t p) const {
  TORCH_INTERNAL_ASSERT(p >= 0 && p < n_rows_, "contres: internal error: row ", p, " of ", n_rows_);
  const int64_t M = n_controls_, q = q_;
  if (interp_ == Interp::None) return {p, 0};  // the op's rows are the kernels themselves
  if (interp_ == Interp::Constant || M == 1) return {std::min(p * M / q, M - 1), 0};
  const int64_t j = std::min(p * (M - 1) / q, M - 2);
  const double a = static_cast<double>(p * (M - 1) - j * q) / static_cast<double>(q);  // s - j, s = p (M - 1) / q
  return a == 1 ? RowMix{j + 1, 0} : RowMix{j, a};  // a = 1 only at t = T (rk4's last half step)
}

Weights::Weights(const at::Tensor& weight, const at::Tensor& bias, Interpolation rows, at::ScalarType conv_dtype)
    : weight_(weight.contiguous()),
      bias_(bias.contiguous()),
      conv_weight_(weight_.to(conv_dtype)),
      conv_bias_(bias_.to(conv_dtype)),
      rows_(rows) {}

at::Tensor Weights::K(int64_t row) const {
  const RowMix r = rows_.row(row);
  return r.a == 0 ? conv_weight_[r.j] : mixed(row).K;
}

at::Tensor Weights::b(int64_t row) const {
  const RowMix r = rows_.row(row);
  return r.a == 0 ? conv_bias_[r.j] : mixed(row).b;
}

const Weights::Mixed& Weights::mixed(int64_t row) const {
  if (row != mixed_.row) {  // new tensors: one handed out before may still be held
    const RowMix r = rows_.row(row);
    const at::ScalarType conv = conv_weight_.scalar_type();
    mixed_ = {row, at::lerp(weight_[r.j], weight_[r.j + 1], r.a).to(conv),
              at::lerp(bias_[r.j], bias_[r.j + 1], r.a).to(conv)};
  }
  return mixed_;
}

Grads::Grads(const Weights& w)
    : w_(w),
      weight_(at::empty_like(w.controls(), at::MemoryFormat::Contiguous)),
      bias_(at::empty_like(w.control_biases(), at::MemoryFormat::Contiguous)),
      written_(static_cast<size_t>(w.controls().size(0)), false) {}

Grads::Slot Grads::slot(int64_t row, bool may_accumulate) {
  const RowMix r = w_.rows().row(row);
  if (r.a == 0 && (may_accumulate || !written_[r.j])) return {weight_[r.j], bias_[r.j], bool(written_[r.j])};
  if (!scratch_K_.defined()) scratch_K_ = at::empty_like(weight_[0]), scratch_b_ = at::empty_like(bias_[0]);
  return {scratch_K_, scratch_b_, false};
}

void Grads::commit(int64_t row, const Slot& slot) {
  const RowMix r = w_.rows().row(row);
  if (!slot.dK.is_same(scratch_K_)) {  // written in place
    written_[r.j] = true;
    return;
  }
  fold(r.j, 1 - r.a, slot.dK, slot.db);
  if (r.a != 0) fold(r.j + 1, r.a, slot.dK, slot.db);
}

void Grads::fold(int64_t j, double c, const at::Tensor& dK, const at::Tensor& db) {
  at::Tensor gK = weight_[j], gb = bias_[j];
  if (written_[j]) {
    gK.add_(dK, c), gb.add_(db, c);
    return;
  }
  gK.copy_(dK), gb.copy_(db);
  if (c != 1) gK.mul_(c), gb.mul_(c);
  written_[j] = true;
}

std::tuple<at::Tensor, at::Tensor> Grads::finish() {
  for (size_t j = 0; j < written_.size(); ++j)
    if (!written_[j]) weight_[j].zero_(), bias_[j].zero_();  // a control no stage time reads
  return {weight_, bias_};
}

at::Tensor adjoint_at(Stages& st, const Upstream& up, const at::Tensor& U, const Weights& w, Grads& grads, int64_t row,
                      const at::Tensor& aux) {
  const Grads::Slot slot = grads.slot(row);
  at::Tensor mu = st.adjoint(up, U, w.K(row), aux, slot.dK, slot.db, slot.accumulate, true);
  grads.commit(row, slot);
  return mu;
}

}  // namespace contres
