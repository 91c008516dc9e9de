// Text of values for error messages and cache keys, made without a std::ostream: libc10 formats SymInt, Device,
// Scalar and Tensor out of line, and a stream built in this library and written by libc10 crashed the GPU
// machine's image (two libstdc++ copies, two locale registries; tests/test_source_rules.py keeps them apart).
// Every message and key formats through these overloads (and Device::str(), c10::toString(ScalarType)).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/core/SymInt.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace contres {

std::string describe(const c10::SymInt& v);   // "4", or "?" when symbolic
std::string describe(c10::SymIntArrayRef v);  // "(2, 3, 4)", "(5,)"
std::string describe(c10::IntArrayRef v);     // the same for concrete sizes
inline std::string describe(at::ScalarType t) { return c10::toString(t); }
inline std::string describe(const c10::Device& d) { return d.str(); }

}  // namespace contres
