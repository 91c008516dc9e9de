// Adds the fused step graphs' Python functions (contres._C._cudnn_*) to the extension module.
#pragma once

#include <pybind11/pybind11.h>

namespace contres {
namespace cudnn_fusion {

void bind(pybind11::module& m);

}  // namespace cudnn_fusion
}  // namespace contres
