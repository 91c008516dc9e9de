// Fused cuDNN graphs of one Euler step (cuDNN frontend graph API, runtime-fused kernels): the convolution and
// its elementwise epilogue in one kernel, forward and backward. The N-step driver calls these per step where
// supports() says yes and falls back to ATen's convolutions plus the elementwise passes otherwise.
//
// Conventions of every function here:
//   - activations (u, a, lam, g, mask, values, ...) are (B, C, H, W) tensors in channels_last (NHWC, dense);
//   - K is one step's kernel (C, C, k, k) in channels_last (KRSC), odd k, stride 1, padding k / 2;
//   - b is one step's bias (C), contiguous;
//   - float32, bfloat16 and float16; not float64. float32 runs on TF32 tensor cores when
//     torch.backends.cudnn.allow_tf32 is on; when it is off only engines without cuDNN's tensor-core numerical
//     note are taken (true float32), and with torch.use_deterministic_algorithms(True) only engines without the
//     nondeterministic note (a run_* returns false when none is left). With cuDNN 9.24 on Hopper true float32
//     has an engine for every graph except those with a mask (UINT8) operand or the fused bias sum;
//   - every data pointer 16-byte aligned (cuDNN's default operand alignment), else run_* returns false;
//   - every output is written in full; inputs are never written (unless an output aliases one, as said);
//   - work runs on the current CUDA stream; workspace comes from the caching allocator (capture-safe);
//   - a graph is built (NVRTC-compiled) on first use and cached per key, thread-safely; it is not built while
//     the current stream is capturing a CUDA graph (run_* returns false then; warm up before capturing).
// Each run_* returns false, having written nothing, when cuDNN cannot build or run that graph (only a bias_out,
// which is zeroed before the graph runs, may hold zeros after an execution failure); the caller then runs its
// unfused path. A key that failed once is remembered and not tried again. Inconsistent arguments
// (shapes, devices, forbidden aliasing) are errors (c10::Error), not a false.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../../activations.h"

namespace contres {
namespace cudnn_fusion {

// Numerics follow activations.h, with float intermediates; where they differ: relu and leaky_relu backward use
// cuDNN's RELU_BWD, so where act' = 0 an infinite lam gives 0 (as torch's threshold_backward) rather than the
// elementwise passes' NaN, and a NaN a = act(z) in a Value gate is cuDNN's to decide; tanh and sigmoid are
// cuDNN's TANH_FWD / SIGMOID_FWD (a few ulps from libm's).

// The gate of a graph, what the backward needs per element to form act'(z), is config.h's Aux, with one
// difference: a Mask gate is one byte per element (0/1, activations.h's mask_bit(z): relu !(z <= 0), leaky_relu
// z > 0), not the saved aux's bits (the caller packs and unpacks them). None: act' = 1 (identity); Value:
// a = act(z) in the state dtype, act' = Activation<A>::df_value(a). Pre is no gate of a graph.

// Forward, single layer:  u_next = u + h * act(conv(u, K) + b); gate_out (when defined) gets the gate of
// z = conv(u, K) + b: Mask bytes (relu, leaky_relu) or Value act(z). u_next must not alias u (the convolution
// reads u's neighbours).
bool run_forward_single(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, double h, Act act,
                        Aux kind, const at::Tensor& u_next, const at::Tensor& gate_out);

// Forward, double_sym, first half: a_out = act(conv(u, K) + b).
bool run_conv_bias_act(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, Act act,
                       const at::Tensor& a_out);

// y_out = base + alpha * conv(v, K) (no bias). With K = flip(K_k)^T (kernel flipped in space, in/out channels
// swapped) this is base + alpha * convT(v, K_k): double_sym's update u_next = u - h convT(a, K_k) (run_dgrad_add
// does the same from K_k itself). y_out may alias base, not v.
bool run_conv_axpy(const at::Tensor& v, const at::Tensor& K, const at::Tensor& base, double alpha,
                   const at::Tensor& y_out);

// Backward, data gradient of a step and the gate of the step before it:
//   lam_out = dgrad(g, K) + lam            (dgrad = convT(g, K), the data gradient of conv(., K))
//   g_out = scale * act'(gate) * lam_out
//   bias_out = sum over (B, H, W) of g_out (float32, (C)), when bias_out is defined: summed before g_out is
//   rounded to the state dtype. In true float32 (TF32 off) no cuDNN engine fuses this sum (cuDNN 9.24, Hopper):
//   pass no bias_out there and reduce g_out yourself.
// lam_out may alias lam.
bool run_dgrad_gate(const at::Tensor& g, const at::Tensor& K, const at::Tensor& lam, const at::Tensor& gate, Act act,
                    Aux kind, double scale, const at::Tensor& lam_out, const at::Tensor& g_out,
                    const at::Tensor& bias_out);

// lam_out = lam + alpha * dgrad(g, K). alpha = 1: the last step of the backward (dL/dx); alpha = -h with g = a:
// double_sym's update u_next = u - h convT(a, K_k) straight from K_k (no flipped kernel). lam_out may alias lam.
bool run_dgrad_add(const at::Tensor& g, const at::Tensor& K, const at::Tensor& lam, const at::Tensor& lam_out,
                   double alpha = 1.0);

// Backward of double_sym: g_out = scale * act'(gate) * conv(v, K) (no bias); bias_out = sum over (B, H, W) of
// g_out (float32, (C)), when defined (as for run_dgrad_gate).
bool run_conv_gate(const at::Tensor& v, const at::Tensor& K, const at::Tensor& gate, Act act, Aux kind,
                   double scale, const at::Tensor& g_out, const at::Tensor& bias_out);

// Weight gradient through cuDNN's frontend: dK_out ((C, C, k, k), float32 or the state dtype, channels_last or
// contiguous as given) = conv weight gradient of conv(u, .) under upstream g. For measuring against ATen's.
bool run_wgrad(const at::Tensor& u, const at::Tensor& g, const at::Tensor& dK_out);

// Whether the fused graphs can serve this problem at all (dtype, C alignment, kernel size, cuDNN version,
// the GPU's architecture); decided on the host without building anything.
bool supports(at::ScalarType dtype, int64_t C, int64_t kernel_size, Act act);

// Diagnostics for tests and the benchmark: one entry per graph built so far.
struct GraphRecord {
  std::string key;     // the graph kind and its shape, dtype, activation, gate, scalars, precision
  std::string plan;    // cuDNN's engine / plan name, or "unsupported: <why>"
  double build_s = 0;  // seconds the first build (NVRTC compile included) took
  int64_t runs = 0;    // executions so far
};
std::vector<GraphRecord> built_graphs();  // the plan cache (cuda_caches.h: its limit, stats, emptying)

}  // namespace cudnn_fusion
}  // namespace contres
