// Instantiates the fused-pass launchers for c10::Half and c10::BFloat16 (see kernels.cuh).
#include "kernels.cuh"

namespace contres {
namespace cuda_detail {
CONTRES_INSTANTIATE_LAUNCHERS(c10::Half)
CONTRES_INSTANTIATE_LAUNCHERS(c10::BFloat16)
}  // namespace cuda_detail
}  // namespace contres
