// The own convolution's Python hook for bench/cpu_conv.py (_C._own_conv), in a file of its own: it needs torch's
// pybind11 type casters, whose headers are slow to compile.
#pragma once

#include <pybind11/pybind11.h>

namespace contres {
void bind_own_conv(pybind11::module_& m);
}  // namespace contres
