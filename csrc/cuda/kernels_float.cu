// Instantiates the fused-pass launchers for float and double (see kernels.cuh).
#include "kernels.cuh"

namespace contres {
namespace cuda_detail {
CONTRES_INSTANTIATE_LAUNCHERS(float)
CONTRES_INSTANTIATE_LAUNCHERS(double)
}  // namespace cuda_detail
}  // namespace contres
