// The plan cache of the fused graphs: one plan per device, compute capability and graph (describe(spec)), built
// on first use and shared by every thread. Bounded (cuda_caches.h: max_plans, least recently used evicted; a plan
// in use lives on in its callers) and never destroyed at exit: its frontend graphs would be torn down after cuDNN
// and CUDA have gone, which can turn a clean exit into a crash.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "device_graph.h"
#include "graph_spec.h"

namespace contres {
namespace cudnn_fusion {

struct Plan {
  std::string key;
  mutable std::mutex build_mutex;
  bool tried = false;   // a build was attempted (under build_mutex)
  bool usable = false;  // built, and no execution failed since (under build_mutex)
  std::string engine;   // cuDNN's engine name, or "unsupported: <why>"
  double build_s = 0;
  int64_t workspace = 0;
  std::atomic<int64_t> runs{0};
  std::shared_ptr<DeviceGraph> graph;
};

// The plan of spec on this device (compute capability sm), built on first use. Null when cuDNN cannot build it,
// now or in an earlier call, or when it is not built yet and may_build is false.
std::shared_ptr<Plan> find_plan(const GraphSpec& spec, int device, int sm, bool may_build);

// Executes plan on the current stream with these operands and a workspace of plan.workspace bytes. False when
// cuDNN refused (the plan is then marked unusable and not run again).
bool execute(Plan& plan, const Operands& operands, void* workspace);

}  // namespace cudnn_fusion
}  // namespace contres
