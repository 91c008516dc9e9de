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

Weights::Weights(std::vector<at::Tensor> params, const std::vector<bool>& conv_read, Interpolation rows,
                 at::ScalarType conv_dtype)
    : rows_(rows) {
  for (size_t i = 0; i < params.size(); ++i) {
    controls_.push_back(params[i].contiguous());
    cast_.push_back(conv_read[i] ? controls_.back().to(conv_dtype) : controls_.back());
  }
}

at::Tensor Weights::param(int64_t i, int64_t row) const {
  const RowMix r = rows_.row(row);
  return r.a == 0 ? cast_[i][r.j] : mixed(row).values[i];
}

std::vector<at::Tensor> Weights::row(int64_t row) const {
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < count(); ++i) out.push_back(param(i, row));
  return out;
}

const Weights::Mixed& Weights::mixed(int64_t row) const {
  if (row != mixed_.row) {  // new tensors: one handed out before may still be held
    const RowMix r = rows_.row(row);
    mixed_.row = row;
    mixed_.values.clear();
    for (size_t i = 0; i < controls_.size(); ++i)
      mixed_.values.push_back(at::lerp(controls_[i][r.j], controls_[i][r.j + 1], r.a).to(cast_[i].scalar_type()));
  }
  return mixed_;
}

Grads::Grads(const Weights& w) : w_(w), written_(static_cast<size_t>(w.control(0).size(0)), false) {
  for (int64_t i = 0; i < w.count(); ++i) grads_.push_back(at::empty_like(w.control(i), at::MemoryFormat::Contiguous));
}

Grads::Slot Grads::slot(int64_t row, bool may_accumulate) {
  const RowMix r = w_.rows().row(row);
  Slot s;
  if (r.a == 0 && (may_accumulate || !written_[r.j])) {
    for (const at::Tensor& g : grads_) s.d.push_back(g[r.j]);
    s.accumulate = written_[r.j];
    return s;
  }
  if (scratch_.empty())
    for (const at::Tensor& g : grads_) scratch_.push_back(at::empty_like(g[0]));
  s.d = scratch_;
  return s;
}

void Grads::commit(int64_t row, const Slot& slot) {
  const RowMix r = w_.rows().row(row);
  if (scratch_.empty() || !slot.d[0].is_same(scratch_[0])) {  // written in place
    written_[r.j] = true;
    return;
  }
  fold(r.j, 1 - r.a, slot);
  if (r.a != 0) fold(r.j + 1, r.a, slot);
}

void Grads::fold(int64_t j, double c, const Slot& slot) {
  for (size_t i = 0; i < grads_.size(); ++i) {
    at::Tensor g = grads_[i][j];
    if (written_[j]) {
      g.add_(slot.d[i], c);
    } else {
      g.copy_(slot.d[i]);
      if (c != 1) g.mul_(c);
    }
  }
  written_[j] = true;
}

std::vector<at::Tensor> Grads::finish() {
  for (size_t j = 0; j < written_.size(); ++j)
    if (!written_[j])
      for (const at::Tensor& g : grads_) g[j].zero_();  // a control no stage time reads
  return grads_;
}

at::Tensor adjoint_at(Stages& st, const Upstream& up, const at::Tensor& U, const Weights& w, Grads& grads, int64_t row,
                      const Kept& kept) {
  const Grads::Slot slot = grads.slot(row);
  at::Tensor mu = st.adjoint(up, U, w, row, kept, slot, true);
  grads.commit(row, slot);
  return mu;
}

}  // namespace contres
