// The fused elementwise passes of the ODE block, one implementation per device (cpu/, cuda/passes/). Everything
// else in a step (the convolutions) goes to ATen (oneDNN on the CPU, cuDNN on CUDA) or to the fused cuDNN graphs.
//
// Every state-like operand of a pass is a dense tensor, all of one memory layout (the driver hands them its
// channels_last data): the passes index memory linearly, element i of each operand being element i of the others.
// A Mask aux is bit-packed in that order: bit t of byte j is element 8j + t.
//
// Precision: each operand is of the state dtype S or of the convolution dtype L, as each struct below says. S and
// L are one dtype (double, float, bf16 or fp16), or S = float with L = bf16 or fp16: mixed precision, where the
// running state and the adjoint stay float and only what a convolution reads or wrote is in the low dtype (what
// torch.autocast does per op). A pass takes L from its convolution operand (z, or the gate's g) and S from its
// first defined state operand (L when it has none), computes in float for the reduced types (double for double)
// and rounds once per stored element. Mixed precision is a CPU feature: the CUDA passes take S == L.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "activations.h"
#include "chain.h"

namespace contres {

// What a forward pass writes of its f, as the linear combinations the methods make of it:
//   out  = c0 * x0 + c1 * x1 + alpha * f    when out is defined (x1 may be undefined)
//   out_low = the same value in L           when out_low is defined (mixed precision only; out may be undefined):
//                                           the next evaluation's input, written by the pass that makes the state
//   out2 = y0 + beta * f                    when out2 is defined
// out, x0, x1, out2 and y0 are of the state dtype S. out may alias x0 or x1, and out2 y0: every element is read
// before it is written.
struct Combination {
  at::Tensor out, x0, x1;
  double c0 = 1, c1 = 0, alpha = 0;
  at::Tensor out_low;
  at::Tensor out2, y0;
  double beta = 0;
  bool any() const { return out.defined() || out_low.defined() || out2.defined(); }
  // S: the dtype of the first defined state operand, else `otherwise` (L).
  at::ScalarType state_dtype(at::ScalarType otherwise) const {
    for (const at::Tensor* t : {&out, &x0, &out2, &y0})
      if (t->defined()) return t->scalar_type();
    return otherwise;
  }
};

// One evaluation of the single layer's f = act(z), or of the identity (f = z) for double_sym's update and the
// methods' linear combinations: writes `comb`, and aux = what the backward needs of z when aux is defined (Mask,
// the sign bits of z; Value, f). (act, aux_kind) must be forward_pass_reachable (config.h). z and a Value aux are
// of the convolution dtype L.
struct ForwardPass {
  at::Tensor z;
  Act act = Act::Identity;
  Aux aux_kind = Aux::None;
  Combination comb;
  at::Tensor aux;
};

// The adjoint gate of one evaluation:
//   v = lam + c_mu * mu                      (mu may be undefined)
//   g = scale * act'(z) * v                  act' from aux (kind aux_kind; None: 1)
//   sum_out = sum_in + mu                    when sum_out is defined (sum_in undefined: lam)
//   bias = sum over (B, H, W) of g           when bias is defined and the device reduces it in the pass (CPU:
//                                            always, from g before it is rounded; CUDA: C % 8 == 0 and aligned
//                                            data), in a fixed order
// (act, aux_kind) must be gate_pass_reachable. g may alias lam; sum_out may alias mu or sum_in. lam, sum_in and
// sum_out are of the state dtype S; mu, g (what the convolutions read and wrote) and a Value aux of L.
struct GatePass {
  at::Tensor lam, mu;
  double c_mu = 1;
  at::Tensor aux;
  Act act = Act::Identity;
  Aux aux_kind = Aux::None;
  double scale = 1;
  at::Tensor g, sum_in, sum_out;
  at::Tensor bias;       // (C), any floating dtype (the CPU accumulates in float or double and rounds once)
  int64_t channels = 0;  // C: the data are channels_last, so element i has channel i % C
};

// Norm "tv", per pixel over its C channels (contiguous in channels_last): n = z / r, r = sqrt(sum_c z^2 + kTvEps),
// a = act(n). Forward: comb with f = a; a_out = a (may alias z); z_keep = z (the Pre aux). z, a_out and z_keep
// are of the convolution dtype L.
struct TvForwardPass {
  at::Tensor z;
  int64_t channels = 0;
  Act act = Act::Identity;
  Combination comb;
  at::Tensor a_out, z_keep;
};
// Adjoint: v = lam + c_mu * mu, w = scale * act'(n) * v, g = dL/dz = (w - n (n . w)) / r; sum_out = sum_in + mu
// as GatePass; a_out = act(n) when defined. z is the kept pre-activation. g may alias lam. lam and the sums are of
// the state dtype S; mu, z, g and a_out of L.
struct TvGatePass {
  at::Tensor lam, mu;
  double c_mu = 1;
  at::Tensor z;
  int64_t channels = 0;
  Act act = Act::Identity;
  double scale = 1;
  at::Tensor g, sum_in, sum_out, a_out;
};

// ------------------------------------------------------------------------------------ the chains' run passes

// One run of a chain's elementwise stages (chain.h's RunSpec) over one evaluation, per pixel over its `width`
// channels (contiguous in channels_last), its steps in order. A group or instance norm normalises per sample and
// group with statistics a sweep over the data computes first (forward), and the two sums its backward needs the
// same way. Operands: `in` is the state (run 0; dtype S) or a convolution's output (L); outputs a convolution
// reads, kept entries and g are of L; the combination and the running sums of S. Every reduction (statistics,
// parameter gradients) is over fixed pieces of the data, summed in a fixed order: deterministic.
struct RunForwardPass {
  const RunSpec* run = nullptr;
  int64_t batch = 0;                // B: the data are B samples of numel / (B width) pixels each
  at::Tensor in;
  at::Tensor time_map;              // (H, W, width), opmath: t times the time kernel's response, added to in
  std::vector<at::Tensor> params;   // the row's parameters in plan order (each step reads its own), any dtype
  std::vector<at::Tensor> stats;    // per step: a group norm's (B, groups, 2) statistics, written
  at::Tensor out;                   // the run's output, for the convolution that reads it (L)
  Combination comb;                 // the last run: the method's combination of f = the run's output
  at::Tensor keep;                  // its kept entry (run->keep): Pre, a copy of in; Value, the output; Mask
};

// The backward of a run: g = dL/d(in) from the gradient at its output, which is dy (L), or for the last run the
// method's upstream scale (lam + c_mu mu) with the running sum sum_out = sum_in + mu (GatePass's operands).
struct RunGatePass {
  const RunSpec* run = nullptr;
  int64_t batch = 0;
  at::Tensor in;                    // the run's input (kept Pre, or the state), recomputed from; else undefined
  at::Tensor kept;                  // kept Value or Mask (the run has nothing to recompute)
  at::Tensor time_map;
  std::vector<at::Tensor> params;
  std::vector<at::Tensor> stats;    // per step: a group norm's statistics, read
  at::Tensor dy;
  at::Tensor lam, mu;
  double c_mu = 1, scale = 1;
  at::Tensor sum_in, sum_out;
  at::Tensor g;
  at::Tensor out;                   // the run's output recomputed, for the convolution that reads it
  std::vector<at::Tensor> param_grads;  // per plan parameter: the gradients of the run's steps (width), written
  at::Tensor conv_bias_grad;        // sum over (B, H, W) of g: the bias of the conv before the run, written
};

void run_forward_pass_cpu(const RunForwardPass& p);
void run_gate_pass_cpu(const RunGatePass& p);
// The same with ATen operations, on any device (the CUDA path of the chains, and a second implementation the
// tests hold the CPU kernels against).
void run_forward_pass_aten(const RunForwardPass& p);
void run_gate_pass_aten(const RunGatePass& p);

void forward_pass_cpu(const ForwardPass& p);
// a = act(z) in one vectorised pass (a may be z itself): double_sym's activation on the CPU, where ATen's
// separate bf16 tanh cost as much as the pass around it.
void activation_pass_cpu(const at::Tensor& z, Act act, const at::Tensor& a);
bool gate_pass_cpu(const GatePass& p);  // reduces the bias when asked (returns whether it did)
void tv_forward_pass_cpu(const TvForwardPass& p);
void tv_gate_pass_cpu(const TvGatePass& p);

#ifdef CONTRES_WITH_CUDA
void forward_pass_cuda(const ForwardPass& p);
// Reduces the bias in the pass (deterministically) when C % 8 == 0 and the data are aligned; returns whether it did.
bool gate_pass_cuda(const GatePass& p);
void tv_forward_pass_cuda(const TvForwardPass& p);
void tv_gate_pass_cuda(const TvGatePass& p);
// Bit-packs a uint8 mask (one byte per element, nonzero = 1) into Mask bits, and back.
void pack_mask_cuda(const at::Tensor& bytes, const at::Tensor& bits);
void unpack_mask_cuda(const at::Tensor& bits, const at::Tensor& bytes);
#endif

}  // namespace contres
