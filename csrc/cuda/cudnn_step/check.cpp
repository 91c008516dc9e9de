// The deviceless CPU-side check of the fused graphs (check.h).
#include "check.h"

#include <string>
#include <vector>

#include "frontend.h"

namespace contres {
namespace cudnn_fusion {

namespace {

void check_one(const GraphSpec& spec, const std::shared_ptr<const fe::DeviceProperties>& props, int sm, bool build,
               CheckResult& r) {
  auto graph = make_graph(spec);
  auto fail = [&r](const char* stage, fe::error_t status) {
    r.error = std::string(stage) + ": " + status.get_message();
  };
  auto st = graph->validate();
  if (!st.is_good()) return fail("validate", st);
  r.validated = true;
  if (!props) return;
  graph->set_device_properties(props).set_sm_version(sm);
  st = graph->build_operation_graph();
  if (!st.is_good()) return fail("operation graph", st);
  r.lowered = true;
  st = graph->create_execution_plans(heuristics());
  for (int64_t i = 0; i < graph->get_execution_plan_count(); ++i) {
    std::string name;
    if (graph->get_plan_name_at_index(i, name).is_good()) r.engines.push_back(name);
  }
  if (!st.is_good()) return fail("heuristics", st);
  deselect_engines(*graph, spec);
  st = graph->check_support();
  if (!st.is_good()) return fail("check_support", st);
  r.supported = true;
  if (!build) return;
  // The first config that passes the filters, as build_plans(HEURISTICS_CHOICE) would try it. Configs the
  // filters barred fail at once, with the frontend's "Deselecting" message, and are skipped.
  for (int64_t i = 0; i < graph->get_execution_plan_count(); ++i) {
    st = graph->build_plan_at_index(i);
    const std::string msg = st.get_message();
    const bool barred = msg.find("Deselecting") != std::string::npos || msg.find("Skipping plan") != std::string::npos;
    if (!st.is_good() && barred) continue;
    r.built_plan = i < static_cast<int64_t>(r.engines.size()) ? r.engines[i] : std::to_string(i);
    r.build_error = st.is_good() ? "" : msg;
    return;
  }
  r.build_error = "no config left to build";
}

}  // namespace

std::vector<CheckResult> check_graphs(const std::vector<GraphSpec>& specs, const std::string& device_properties_json,
                                      int sm_version, bool build) {
  std::shared_ptr<fe::DeviceProperties> props;
  std::string props_error;
  if (!device_properties_json.empty()) {
    props = std::make_shared<fe::DeviceProperties>();
    const std::vector<uint8_t> bytes(device_properties_json.begin(), device_properties_json.end());
    auto st = props->deserialize(bytes);
    if (!st.is_good()) {
      props_error = "device properties: " + st.get_message();
      props.reset();
    }
  }
  std::vector<CheckResult> out(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    CheckResult& r = out[i];
    r.key = contres::describe(specs[i]);
    r.error = spec_problem(specs[i]);
    if (!r.error.empty()) continue;
    try {
      check_one(specs[i], props, sm_version, build, r);
    } catch (const std::exception& e) {
      if (r.error.empty()) r.error = e.what();
    }
    if (r.error.empty() && !props_error.empty() && r.validated && !r.lowered) r.error = props_error;
  }
  return out;
}

}  // namespace cudnn_fusion
}  // namespace contres
