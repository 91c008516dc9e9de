// Execution of a built fused graph on the current stream.
#include <ATen/cudnn/Handle.h>

#include <string>
#include <unordered_map>

#include "device_graph.h"
#include "frontend.h"

namespace contres {
namespace cudnn_fusion {

bool run_graph(DeviceGraph& graph, const Operands& operands, void* workspace, std::string* why) {
  std::unordered_map<int64_t, void*> pack;
  for (int r = 0; r < kNumRoles; ++r)
    if (operands.ptr[r]) pack.emplace(r + 1, operands.ptr[r]);
  try {
    auto status = graph.graph->execute(at::native::getCudnnHandle(), pack, workspace);
    if (status.is_good()) return true;
    *why = status.get_message();
  } catch (const std::exception& e) {
    *why = e.what();
  }
  return false;
}

}  // namespace cudnn_fusion
}  // namespace contres
