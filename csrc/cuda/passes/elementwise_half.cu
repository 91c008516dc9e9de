// The elementwise passes for c10::Half and c10::BFloat16 (see elementwise.cuh).
#include "elementwise.cuh"

namespace contres {
namespace cuda_detail {
CONTRES_ELEMENTWISE_LAUNCHERS(, c10::Half)
CONTRES_ELEMENTWISE_LAUNCHERS(, c10::BFloat16)
}  // namespace cuda_detail
}  // namespace contres
