// The global switches that change what the CUDA paths compute: TF32 for convolutions and matrix products, and
// determinism. The fused cuDNN graphs pick their engines by them; the CUDA-graph cache keys on them.
#pragma once

#include <ATen/Context.h>

#include <optional>
#include <string>

namespace contres {
namespace precision_detail {

// torch.backends.cudnn.allow_tf32 as ATen's convolutions read it: per operator where the Context has the
// Float32Op API (torch >= 2.10), else the one legacy flag. Detected from allowTF32CuDNN's signature.
template <typename E>
E float32_op_of(bool (at::Context::*)(std::optional<E>) const);

template <typename Ctx, typename Op = decltype(float32_op_of(&Ctx::allowTF32CuDNN))>
bool tf32_conv(const Ctx& ctx, int) {
  return ctx.allowTF32CuDNN(Op::CONV);
}
template <typename Ctx>
bool tf32_conv(const Ctx& ctx, long) {
  return ctx.allowTF32CuDNN();
}

}  // namespace precision_detail

inline bool tf32_convolutions() { return precision_detail::tf32_conv(at::globalContext(), 0); }
inline bool tf32_matmuls() { return at::globalContext().allowTF32CuBLAS(); }
inline bool deterministic() { return at::globalContext().deterministicAlgorithms(); }

// All of them, and cuDNN's own determinism and benchmark switches (which pick other algorithms), as a key part.
inline std::string precision_key() {
  const auto& ctx = at::globalContext();
  return std::string("tf32conv=") + (tf32_convolutions() ? '1' : '0') + " tf32mm=" + (tf32_matmuls() ? '1' : '0') +
         " det=" + (deterministic() ? '1' : '0') + " cudnn_det=" + (ctx.deterministicCuDNN() ? '1' : '0') +
         " cudnn_bench=" + (ctx.benchmarkCuDNN() ? '1' : '0');
}

}  // namespace contres
