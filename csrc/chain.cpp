#include "chain.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "describe.h"

namespace contres {
namespace {

// "weight", "weight2", ...: the i-th (1-based) parameter of a kind, as the module names it.
std::string numbered(const char* base, int64_t i) { return i == 1 ? base : base + std::to_string(i); }

// The run's shape for keep_of.
RunShape shape_of(const RunSpec& run, Act act, bool read_by_conv) {
  RunShape r;
  r.read_by_conv = read_by_conv;
  for (const RunStep& s : run.steps) {
    if (s.kind == Stage::Norm) r.norm = true;
    if (s.kind == Stage::Act) r.acts += 1, r.act = act;
    if ((s.kind == Stage::Bias || s.kind == Stage::Neg) && r.acts > 0) r.after_act = true;
  }
  return r;
}

}  // namespace

std::string describe_stages(const std::vector<Stage>& stages) {
  std::string s;
  for (size_t i = 0; i < stages.size(); ++i) s += (i ? "," : "") + std::string(name_of(stages[i]));
  return s;
}

Plan make_plan(const Config& cfg, const c10::SymInt& C, const c10::SymInt& weight_out, int64_t k) {
  const std::vector<Stage>& stages = cfg.stages;
  const std::string chain = "the chain '" + describe_stages(stages) + "'";
  int64_t last_conv = -1;
  for (size_t s = 0; s < stages.size(); ++s)
    if (stages[s] == Stage::Conv) last_conv = static_cast<int64_t>(s);
  TORCH_CHECK_VALUE(last_conv >= 0, "contres: ", chain, " has no conv stage; a right-hand side needs one");
  auto conv_t_after = [&](int64_t s) {
    return std::find(stages.begin() + s + 1, stages.end(), Stage::ConvT) != stages.end();
  };
  // The first conv maps to the hidden width unless it is the last one with no conv_t after it.
  const int64_t first_conv = std::find(stages.begin(), stages.end(), Stage::Conv) - stages.begin();
  const bool first_maps_to_hidden = first_conv != last_conv || conv_t_after(first_conv);

  Plan plan;
  plan.k = k;
  plan.params.resize(2);  // the first conv's kernel and bias: the op's weight and bias, whatever comes before it
  plan.hidden = first_maps_to_hidden ? weight_out : C;
  plan.runs.emplace_back();
  plan.runs.back().width = C;
  c10::SymInt width = C;
  int64_t n_conv = 0, n_bias = 0, n_norm = 0;
  for (size_t si = 0; si < stages.size(); ++si) {
    const int64_t s = static_cast<int64_t>(si);
    const Stage stage = stages[si];
    if (stage == Stage::Conv || stage == Stage::ConvT) {
      ConvSpec conv;
      conv.in = width;
      if (stage == Stage::Conv) {
        n_conv += 1;
        conv.source = static_cast<int64_t>(plan.convs.size());
        conv.out = s == last_conv && !conv_t_after(s) ? C : plan.hidden;
        conv.time = cfg.time_channel;
        const c10::SymInt in = cfg.time_channel ? width + 1 : width;
        const ParamSpec kernel{ParamKind::Kernel, s, numbered("weight", n_conv), {conv.out, in, k, k}};
        const ParamSpec bias{ParamKind::ConvBias, s, numbered("bias", n_conv), {conv.out}};
        if (n_conv == 1) {
          conv.kernel = 0, conv.bias = 1, plan.params[0] = kernel, plan.params[1] = bias;
        } else {
          conv.kernel = plan.n_params(), conv.bias = conv.kernel + 1;
          plan.params.push_back(kernel), plan.params.push_back(bias);
        }
      } else {
        int64_t source = -1;  // the nearest conv before it
        for (int64_t c = static_cast<int64_t>(plan.convs.size()) - 1; c >= 0 && source < 0; --c)
          if (!plan.convs[c].transposed) source = c;
        TORCH_CHECK_VALUE(source >= 0, "contres: stage ", s, " of ", chain, " is a conv_t with no conv before it "
                          "(a conv_t applies the kernel of the nearest conv before it)");
        const ConvSpec& src = plan.convs[source];
        TORCH_CHECK_VALUE(width == src.out, "contres: stage ", s, " of ", chain, " is a conv_t of the conv of stage ",
                          plan.params[src.kernel].stage, ", which maps to ", describe(src.out), " channels, but ",
                          describe(width), " reach it");
        conv.transposed = true;
        conv.source = source;
        conv.kernel = src.kernel;
        conv.out = src.in;
      }
      plan.convs.push_back(conv);
      width = conv.out;
      plan.runs.emplace_back();
      plan.runs.back().width = width;
      plan.runs.back().conv = static_cast<int64_t>(plan.convs.size()) - 1;
      continue;
    }
    RunStep step{stage};
    if (stage == Stage::Bias) {
      n_bias += 1;
      step.param = plan.n_params();
      plan.params.push_back({ParamKind::Shift, s, numbered("shift", n_bias), {width}});
    } else if (stage == Stage::Norm) {
      TORCH_CHECK_VALUE(cfg.norm != Norm::None, "contres: stage ", s, " of ", chain, " is a norm stage but norm is "
                        "'none'; name the norm (norm='tv', 'group' or 'instance')");
      n_norm += 1;
      step.norm = cfg.norm;
      step.eps = cfg.norm_options.eps;
      if (cfg.norm == Norm::Group || cfg.norm == Norm::Instance) {
        const int64_t w = width.guard_int(__FILE__, __LINE__);
        const int64_t groups = cfg.norm == Norm::Instance ? w
                               : cfg.norm_options.groups > 0 ? cfg.norm_options.groups : std::min<int64_t>(32, w);
        TORCH_CHECK_VALUE(w % groups == 0, "contres: norm_groups = ", groups,
                          cfg.norm_options.groups > 0 ? "" : " (the default, min(32, width))",
                          " does not divide the width ", w, " of the norm at stage ", s, " of ", chain);
        step.groups = groups;
      }
      if (cfg.norm_options.affine) {
        step.param = plan.n_params();
        plan.params.push_back({ParamKind::NormWeight, s, numbered("norm_weight", n_norm), {width}});
        plan.params.push_back({ParamKind::NormBias, s, numbered("norm_bias", n_norm), {width}});
      }
    }
    plan.runs.back().steps.push_back(step);
  }
  TORCH_CHECK_VALUE(width == C, "contres: ", chain, " ends at ", describe(width), " channels; it must end at the "
                    "state's ", describe(C), " (the last conv maps back to it unless a conv_t follows)");

  // What each run keeps (the table), and the slots of one evaluation.
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    RunSpec& run = plan.runs[i];
    run.shape = shape_of(run, cfg.act, i + 1 < plan.runs.size());
    if (i > 0) run.keep = keep_of(run.shape);
    if (run.keep != Aux::None) {
      run.slot = static_cast<int64_t>(plan.slots.size());
      plan.slots.push_back({run.keep, run.width, 0, static_cast<int64_t>(i)});
    }
    for (RunStep& step : run.steps)
      if (step.groups > 0) {
        step.stats = static_cast<int64_t>(plan.slots.size());
        plan.slots.push_back({Aux::Stats, run.width, step.groups, static_cast<int64_t>(i)});
      }
  }

  const bool preset_norm = cfg.norm == Norm::None || (cfg.norm == Norm::Tv && cfg.norm_options.eps == 1e-3);
  plan.layer_passes = cfg.layer != Layer::Chain && cfg.act != Act::Softplus && preset_norm &&
                      !cfg.norm_options.affine && !cfg.time_channel &&
                      (cfg.layer == Layer::Single || plan.hidden == C);
  return plan;
}

}  // namespace contres
