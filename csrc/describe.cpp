#include "describe.h"

namespace contres {
namespace {

std::string text(const c10::SymInt& v) {
  const auto n = v.maybe_as_int();
  return n ? std::to_string(*n) : std::string("?");
}
std::string text(int64_t v) { return std::to_string(v); }

template <typename T>
std::string tuple_of(c10::ArrayRef<T> v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + text(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

}  // namespace

std::string describe(const c10::SymInt& v) { return text(v); }
std::string describe(c10::SymIntArrayRef v) { return tuple_of(v); }
std::string describe(c10::IntArrayRef v) { return tuple_of(v); }

}  // namespace contres
