// The program of one chain of stages for one call (docs/math.md section 8): its convolutions, the runs of
// elementwise stages between them with their widths, the parameters they read (in the op's order), and what one
// evaluation keeps for the backward, each run's entry decided by config.h's keep_of. Built from the configuration
// and the state's and the first kernel's widths; the real ops and the Meta kernels build the same plan, and
// saved.h's specs, the input checks, the kernels and the driver all read it.
#pragma once

#include <c10/core/SymInt.h>

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

namespace contres {

// A parameter of the chain: a conv's kernel or bias, a bias stage's shift, a norm's scale or shift. Each is
// (rows, shape...): one row per control (or per stage time with interp "none"), interpolated like the kernel.
enum class ParamKind : int64_t { Kernel, ConvBias, Shift, NormWeight, NormBias };

struct ParamSpec {
  ParamKind kind;
  int64_t stage;                   // its stage in the chain
  std::string name;                // the module's: weight, bias, weight2, bias2, shift, shift2, norm_weight, ...
  std::vector<c10::SymInt> shape;  // one row's
};

struct ConvSpec {
  bool transposed = false;
  int64_t source = 0;  // the conv (index into Plan::convs) whose kernel it applies: itself, or conv_t's conv
  int64_t kernel = -1;     // the kernel parameter (conv_t: its source's)
  int64_t bias = -1;       // conv: its bias; conv_t: none
  c10::SymInt in, out;     // widths
  bool time = false;       // the kernel's input channel 0 reads t (conv_t applies the kernel without it)
};

// An elementwise stage of a run.
struct RunStep {
  Stage kind;            // Bias, Norm, Act or Neg
  int64_t param = -1;    // Bias: its shift; Norm with norm_affine: its scale (the shift is param + 1)
  Norm norm = Norm::None;
  double eps = 0;        // Norm
  int64_t groups = 0;    // Norm "group" / "instance": its groups (0: tv)
  int64_t stats = -1;    // Norm "group" / "instance": the kept slot of its statistics
  bool grouped() const { return groups > 0; }
};

struct RunSpec {
  std::vector<RunStep> steps;
  c10::SymInt width;
  int64_t conv = -1;     // the conv whose output the run takes (-1: run 0, on the state)
  RunShape shape;
  Aux keep = Aux::None;  // run 0 keeps nothing (its input is the state, kept anyway)
  int64_t slot = -1;     // the kept slot of keep
  bool read_by_conv() const { return shape.read_by_conv; }
  bool empty() const { return steps.empty(); }
};

// One tensor an evaluation keeps: a run's Mask, Value or Pre, or a norm's Stats ((B, groups, 2): mean, 1 / std).
struct SlotSpec {
  Aux kind;
  c10::SymInt width;
  int64_t groups = 0;  // Stats
  int64_t run = 0;
};

struct Plan {
  std::vector<ParamSpec> params;  // params[0], params[1]: the op's weight and bias; then the op's params, in order
  std::vector<ConvSpec> convs;
  std::vector<RunSpec> runs;      // runs[0] before the first conv (on the state), runs[i] after convs[i - 1]
  std::vector<SlotSpec> slots;    // per run in order: its kept entry, then its norms' statistics
  c10::SymInt hidden;             // the hidden width
  int64_t k = 1;                  // every conv's kernel size
  // The presets' own passes run it (stages.cpp): a preset's chain with nothing they lack (no affine norm, no
  // time channel, tv at its default eps, one of their activations, double_sym at hidden == channels).
  bool layer_passes = false;
  // The state dtype reaches the first convolution only through run 0: when it is empty, the evaluations' inputs
  // are the convolution's own inputs (the convolution dtype in mixed precision).
  bool input_is_conv_input() const { return runs.front().empty(); }
  int64_t n_params() const { return static_cast<int64_t>(params.size()); }
};

// The plan of cfg's chain for states of C channels, whose first kernel has `weight_out` output channels (the
// hidden width when the first conv maps to it) and kernel size k. Raises a ValueError naming what is wrong with
// the chain itself (no conv, a conv_t with no conv before it, a width that does not end at C, a norm's groups).
Plan make_plan(const Config& cfg, const c10::SymInt& C, const c10::SymInt& weight_out, int64_t k);

// "conv,norm,act" for error messages.
std::string describe_stages(const std::vector<Stage>& stages);

}  // namespace contres
