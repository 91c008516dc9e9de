// The integrators: each method's forward sweep over a range of steps and its exact discrete adjoint, written on
// the Stages building blocks. The op entry points (ode_ops.cpp) decide what is kept (the table), hand the
// sweeps a Tape that says where each state and aux lives, and replay checkpointed segments. docs/math.md has
// every formula.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "controls.h"
#include "stages.h"

namespace contres {

// Where a sweep reads and writes: u_k, rk4's stage inputs, and each evaluation's kept entries. An undefined tensor
// from state(k) means "not wanted" (the last step of a replayed segment needs its aux only); an undefined entry
// of aux(k, s), that it is not kept. The adjoints read only what the convolutions read: conv_input(k), stage(k, s), aux(k, s).
struct Tape {
  std::function<at::Tensor(int64_t k)> state;         // u_k in the state dtype
  // Mixed precision with low-precision inputs (Problem::low_input) only: u_k in the convolution dtype, the
  // evaluation's input, written by the pass that writes state(k) (unset: state(k) is the input itself).
  std::function<at::Tensor(int64_t k)> input;
  std::function<at::Tensor(int64_t k, int s)> stage;  // rk4: the input of stage s = 1, 2, 3 of step k (conv dtype)
  std::function<Kept(int64_t k, int s)> aux;          // evaluation s (0-based) of step k

  at::Tensor conv_input(int64_t k) const { return input ? input(k) : state(k); }
  at::Tensor low_copy(int64_t k) const { return input ? input(k) : at::Tensor(); }  // a Combination's out_low
};

// Steps [begin, end) forward from tape.state(begin); leapfrog also needs the state before, u_{begin - 1}.
void euler_sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end);
void rk4_sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end);
void leapfrog_sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end,
                    const at::Tensor& u_before);

// Stages::adjoint of the evaluation at U that reads stage-time row `row` of the weights (Weights: the parameters at
// the method's stage times, N rows or rk4's 2N + 1 half steps), its parameters' gradients added into grads;
// returns mu.
at::Tensor adjoint_at(Stages& st, const Upstream& up, const at::Tensor& U, const Weights& w, Grads& grads, int64_t row,
                      const Kept& kept);

// An adjoint walks back through the steps, one segment at a time (last segment first), carrying its state.
class Adjoint {
 public:
  virtual ~Adjoint() = default;
  // Steps end - 1 down to begin, reading the tape.
  virtual void steps(const Tape& tape, int64_t begin, int64_t end) = 0;
  // dL/dx, once every step is done.
  virtual at::Tensor finish() = 0;
};

// One per method; grad_out: dL/du_N in the internal layout and the state dtype (read, never written). The
// adjoints commit every row to grads.
std::unique_ptr<Adjoint> make_euler_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                            const at::Tensor& grad_out);
std::unique_ptr<Adjoint> make_rk4_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                          const at::Tensor& grad_out);
std::unique_ptr<Adjoint> make_leapfrog_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                               const at::Tensor& grad_out);

}  // namespace contres
