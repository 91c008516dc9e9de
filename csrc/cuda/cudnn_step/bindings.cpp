// Python bindings of the fused step graphs, for tests, the support table and diagnostics (contres._C._cudnn_*):
// the CPU-side check, the plan records, and each run_* on tensors.
#include "bindings.h"

#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <vector>

#include "check.h"
#include "fused_step.h"
#include "graph_spec.h"

namespace py = pybind11;

namespace contres {
namespace cudnn_fusion {
namespace {

template <typename T>
T get_or(const py::dict& d, const char* key, T fallback) {
  return d.contains(key) ? d[key].cast<T>() : fallback;
}

GraphSpec spec_from(const py::dict& d) {
  GraphSpec s;
  const auto kind = d["kind"].cast<std::string>();
  if (!parse_kind(kind, &s.kind)) throw py::value_error("unknown graph kind '" + kind + "'");
  s.dtype = d["dtype"].cast<at::ScalarType>();
  s.B = d["B"].cast<int64_t>();
  s.C = d["C"].cast<int64_t>();
  s.H = d["H"].cast<int64_t>();
  s.W = d["W"].cast<int64_t>();
  s.k = get_or<int64_t>(d, "k", 3);
  s.act = parse<Act>(get_or<std::string>(d, "act", "identity"));
  s.gate = parse<Aux>(get_or<std::string>(d, "gate", "none"));
  s.gate_out = get_or<bool>(d, "gate_out", false);
  s.bias_out = get_or<bool>(d, "bias_out", false);
  s.scalar = get_or<double>(d, "scalar", 1.0);
  s.out_dtype = get_or<at::ScalarType>(d, "out_dtype", at::kFloat);
  s.out_channels_last = get_or<bool>(d, "out_channels_last", true);
  s.tf32 = get_or<bool>(d, "tf32", true);
  s.deterministic = get_or<bool>(d, "deterministic", false);
  return s;
}

at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

}  // namespace

void bind(py::module& m) {
  m.def(
      "_cudnn_fusion_check",
      [](const std::vector<py::dict>& specs, const std::string& device_properties_json, int sm_version, bool build) {
        std::vector<GraphSpec> parsed;
        for (const auto& d : specs) parsed.push_back(spec_from(d));
        std::vector<CheckResult> results;
        {
          py::gil_scoped_release no_gil;
          results = check_graphs(parsed, device_properties_json, sm_version, build);
        }
        py::list out;
        for (const auto& r : results) {
          py::dict d;
          d["key"] = r.key;
          d["validated"] = r.validated;
          d["lowered"] = r.lowered;
          d["engines"] = r.engines;
          d["supported"] = r.supported;
          d["built_plan"] = r.built_plan;
          d["build_error"] = r.build_error;
          d["error"] = r.error;
          out.append(d);
        }
        return out;
      },
      py::arg("specs"), py::arg("device_properties_json"), py::arg("sm_version"), py::arg("build") = false,
      "Deviceless check of fused step graphs (see csrc/cuda/cudnn_step/check.h); one dict per spec dict.");
  m.def("_cudnn_fusion_describe", [](const py::dict& spec) { return contres::describe(spec_from(spec)); });
  m.def("_cudnn_fusion_built_graphs", [] {
    py::list out;
    for (const auto& r : built_graphs()) {
      py::dict d;
      d["key"] = r.key;
      d["plan"] = r.plan;
      d["build_s"] = r.build_s;
      d["runs"] = r.runs;
      out.append(d);
    }
    return out;
  });
  m.def("_cudnn_fusion_supports", [](at::ScalarType dtype, int64_t C, int64_t k, const std::string& act) {
    return supports(dtype, C, k, parse<Act>(act));
  });

  // The run_* functions on tensors; optional outputs are None. The GIL is released: a first call builds a plan.
  m.def(
      "_cudnn_forward_single",
      [](const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, double h, const std::string& act,
         const std::string& gate, const at::Tensor& u_next, const std::optional<at::Tensor>& gate_out) {
        py::gil_scoped_release no_gil;
        return run_forward_single(u, K, b, h, parse<Act>(act), parse<Aux>(gate), u_next, or_undefined(gate_out));
      },
      py::arg("u"), py::arg("K"), py::arg("b"), py::arg("h"), py::arg("act"), py::arg("gate"), py::arg("u_next"),
      py::arg("gate_out") = py::none());
  m.def(
      "_cudnn_conv_bias_act",
      [](const at::Tensor& u, const at::Tensor& K, const at::Tensor& b, const std::string& act,
         const at::Tensor& a_out) {
        py::gil_scoped_release no_gil;
        return run_conv_bias_act(u, K, b, parse<Act>(act), a_out);
      },
      py::arg("u"), py::arg("K"), py::arg("b"), py::arg("act"), py::arg("a_out"));
  m.def(
      "_cudnn_conv_axpy",
      [](const at::Tensor& v, const at::Tensor& K, const at::Tensor& base, double alpha, const at::Tensor& y_out) {
        py::gil_scoped_release no_gil;
        return run_conv_axpy(v, K, base, alpha, y_out);
      },
      py::arg("v"), py::arg("K"), py::arg("base"), py::arg("alpha"), py::arg("y_out"));
  m.def(
      "_cudnn_dgrad_gate",
      [](const at::Tensor& g, const at::Tensor& K, const at::Tensor& lam, const std::optional<at::Tensor>& gate,
         const std::string& act, const std::string& kind, double scale, const at::Tensor& lam_out,
         const at::Tensor& g_out, const std::optional<at::Tensor>& bias_out) {
        py::gil_scoped_release no_gil;
        return run_dgrad_gate(g, K, lam, or_undefined(gate), parse<Act>(act), parse<Aux>(kind), scale, lam_out,
                              g_out, or_undefined(bias_out));
      },
      py::arg("g"), py::arg("K"), py::arg("lam"), py::arg("gate"), py::arg("act"), py::arg("kind"), py::arg("scale"),
      py::arg("lam_out"), py::arg("g_out"), py::arg("bias_out") = py::none());
  m.def(
      "_cudnn_dgrad_add",
      [](const at::Tensor& g, const at::Tensor& K, const at::Tensor& lam, const at::Tensor& lam_out, double alpha) {
        py::gil_scoped_release no_gil;
        return run_dgrad_add(g, K, lam, lam_out, alpha);
      },
      py::arg("g"), py::arg("K"), py::arg("lam"), py::arg("lam_out"), py::arg("alpha") = 1.0);
  m.def(
      "_cudnn_conv_gate",
      [](const at::Tensor& v, const at::Tensor& K, const std::optional<at::Tensor>& gate, const std::string& act,
         const std::string& kind, double scale, const at::Tensor& g_out, const std::optional<at::Tensor>& bias_out) {
        py::gil_scoped_release no_gil;
        return run_conv_gate(v, K, or_undefined(gate), parse<Act>(act), parse<Aux>(kind), scale, g_out,
                             or_undefined(bias_out));
      },
      py::arg("v"), py::arg("K"), py::arg("gate"), py::arg("act"), py::arg("kind"), py::arg("scale"),
      py::arg("g_out"), py::arg("bias_out") = py::none());
  m.def(
      "_cudnn_wgrad",
      [](const at::Tensor& u, const at::Tensor& g, const at::Tensor& dK_out) {
        py::gil_scoped_release no_gil;
        return run_wgrad(u, g, dK_out);
      },
      py::arg("u"), py::arg("g"), py::arg("dK_out"));
}

}  // namespace cudnn_fusion
}  // namespace contres
