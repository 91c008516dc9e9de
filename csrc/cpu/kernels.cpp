// CPU implementations of the fused elementwise passes (see kernels.h). Plain loops over 8-element chunks
// that the compiler vectorises; parallel over planes with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../kernels.h"

namespace contres {
namespace {

constexpr int64_t kGrainElements = 1 << 15;

int64_t plane_grain(int64_t hw) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(hw, 1)); }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; }
template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<T>() : nullptr; }

// act' for each of the 256 mask bytes, 8 values per byte, so a chunk of 8 elements reads a contiguous row.
template <typename opmath_t, Act A>
const opmath_t* mask_derivative_table() {
  static const std::array<opmath_t, 256 * 8> table = [] {
    std::array<opmath_t, 256 * 8> t{};
    for (int byte = 0; byte < 256; ++byte)
      for (int bit = 0; bit < 8; ++bit) t[byte * 8 + bit] = Activation<A>::template df_sign<opmath_t>((byte >> bit) & 1);
    return t;
  }();
  return table.data();
}

template <typename scalar_t, Act A>
void single_update_kernel(const at::Tensor& u, const at::Tensor& z, double h, Aux aux_kind, const at::Tensor& u_next,
                          const at::Tensor& aux_out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t hw = u.size(2) * u.size(3);
  const int64_t planes = u.size(0) * u.size(1);
  const int64_t mbytes = mask_bytes(hw);
  const scalar_t* up = u.const_data_ptr<scalar_t>();
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* outp = mut_ptr_or_null<scalar_t>(u_next);
  uint8_t* maskp = aux_kind == Aux::Mask ? mut_ptr_or_null<uint8_t>(aux_out) : nullptr;
  scalar_t* valp = aux_kind == Aux::Value ? mut_ptr_or_null<scalar_t>(aux_out) : nullptr;
  const opmath_t hh = static_cast<opmath_t>(h);

  at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t off = p * hw;
      if (outp || valp) {
        for (int64_t i = 0; i < hw; ++i) {
          const opmath_t a = Activation<A>::f(static_cast<opmath_t>(zp[off + i]));
          if (valp) valp[off + i] = static_cast<scalar_t>(a);
          if (outp) outp[off + i] = static_cast<scalar_t>(static_cast<opmath_t>(up[off + i]) + hh * a);
        }
      }
      if (maskp) {
        uint8_t* m = maskp + p * mbytes;
        for (int64_t j = 0; j < mbytes; ++j) {
          const int64_t i0 = off + 8 * j;
          const int cnt = static_cast<int>(std::min<int64_t>(8, hw - 8 * j));
          unsigned bits = 0;
          for (int t = 0; t < cnt; ++t) bits |= static_cast<unsigned>(zp[i0 + t] > scalar_t(0)) << t;
          m[j] = static_cast<uint8_t>(bits);
        }
      }
    }
  });
}

template <typename scalar_t, Act A, Aux K>
void adjoint_gate_kernel(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, double scale,
                         const at::Tensor& v_out, const at::Tensor& g_out, const at::Tensor& bias_grad) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t B = lam.size(0), C = lam.size(1);
  const int64_t hw = lam.size(2) * lam.size(3);
  const int64_t mbytes = mask_bytes(hw);
  const scalar_t* lamp = lam.const_data_ptr<scalar_t>();
  const scalar_t* gip = ptr_or_null<scalar_t>(gi);
  scalar_t* vp = mut_ptr_or_null<scalar_t>(v_out);
  scalar_t* gp = g_out.mutable_data_ptr<scalar_t>();
  const uint8_t* maskp = K == Aux::Mask ? aux.const_data_ptr<uint8_t>() : nullptr;
  const scalar_t* valp = K == Aux::Value ? aux.const_data_ptr<scalar_t>() : nullptr;
  const opmath_t* table = K == Aux::Mask ? mask_derivative_table<opmath_t, A>() : nullptr;
  const opmath_t s = static_cast<opmath_t>(scale);
  std::vector<opmath_t> plane_sums(B * C);

  at::parallel_for(0, B * C, plane_grain(hw), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t off = p * hw;
      opmath_t acc = 0;
      for (int64_t j = 0; j < mbytes; ++j) {
        const int64_t i0 = off + 8 * j;
        const int cnt = static_cast<int>(std::min<int64_t>(8, hw - 8 * j));
        const opmath_t* drow = K == Aux::Mask ? table + 8 * maskp[p * mbytes + j] : nullptr;
        for (int t = 0; t < cnt; ++t) {
          const int64_t i = i0 + t;
          opmath_t v = static_cast<opmath_t>(lamp[i]);
          if (gip) v += static_cast<opmath_t>(gip[i]);
          opmath_t d;
          if constexpr (K == Aux::Mask) d = drow[t];
          else if constexpr (K == Aux::Value) d = Activation<A>::df_value(static_cast<opmath_t>(valp[i]));
          else d = opmath_t(1);
          const opmath_t g = s * d * v;
          if (vp) vp[i] = static_cast<scalar_t>(v);
          gp[i] = static_cast<scalar_t>(g);
          acc += g;
        }
      }
      plane_sums[p] = acc;
    }
  });
  std::vector<opmath_t> channel(C, opmath_t(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) channel[c] += plane_sums[b * C + c];
  scalar_t* bp = bias_grad.mutable_data_ptr<scalar_t>();
  for (int64_t c = 0; c < C; ++c) bp[c] = static_cast<scalar_t>(channel[c]);
}

}  // namespace

void single_update_cpu(const at::Tensor& u, const at::Tensor& z, double h, Act act, Aux aux_kind,
                       const at::Tensor& u_next, const at::Tensor& aux_out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "contres_single_update_cpu", [&] {
    dispatch_activation(act, [&](auto tag) {
      single_update_kernel<scalar_t, decltype(tag)::value>(u, z, h, aux_kind, u_next, aux_out);
    });
  });
}

void adjoint_gate_cpu(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, Aux aux_kind, Act act,
                      double scale, const at::Tensor& v_out, const at::Tensor& g_out, const at::Tensor& bias_grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lam.scalar_type(), "contres_adjoint_gate_cpu", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      switch (aux_kind) {
        case Aux::Mask: adjoint_gate_kernel<scalar_t, A, Aux::Mask>(lam, gi, aux, scale, v_out, g_out, bias_grad); break;
        case Aux::Value: adjoint_gate_kernel<scalar_t, A, Aux::Value>(lam, gi, aux, scale, v_out, g_out, bias_grad); break;
        default: adjoint_gate_kernel<scalar_t, A, Aux::None>(lam, gi, aux, scale, v_out, g_out, bias_grad); break;
      }
    });
  });
}

}  // namespace contres
