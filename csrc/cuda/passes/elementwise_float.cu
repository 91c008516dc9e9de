// The elementwise passes for float and double (see elementwise.cuh); one file per dtype pair, so nvcc compiles
// them in parallel.
#include "elementwise.cuh"

namespace contres {
namespace cuda_detail {
CONTRES_ELEMENTWISE_LAUNCHERS(, float)
CONTRES_ELEMENTWISE_LAUNCHERS(, double)
}  // namespace cuda_detail
}  // namespace contres
