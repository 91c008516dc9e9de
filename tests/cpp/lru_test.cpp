// csrc/lru.h, the bookkeeping of the bounded CUDA caches, checked on the CPU (tests/test_cuda_caches.py compiles
// and runs this). Prints "ok" and exits 0, or names the first failed check and exits 1.
#include "lru.h"

#include <cstdio>
#include <string>
#include <vector>

#define CHECK(cond)                                                 \
  do {                                                              \
    if (!(cond)) {                                                  \
      std::printf("FAILED line %d: %s\n", __LINE__, #cond);         \
      return 1;                                                     \
    }                                                               \
  } while (0)

struct Value {
  int id = 0;
  bool pinned = false;
};

std::string order(contres::LruMap<Value>& m) {
  std::string s;
  m.for_each([&](const std::string& k, const Value&) { s += k; });
  return s;
}

int main() {
  const auto pinned = [](const Value& v) { return v.pinned; };
  contres::LruMap<Value> m;
  CHECK(m.find("a") == nullptr);
  for (const char* k : {"a", "b", "c"}) CHECK(m.find_or_insert(k, 3, pinned) != nullptr);
  CHECK(order(m) == "cba");  // most recently used first
  CHECK(m.find("a") != nullptr && order(m) == "acb");
  // A fourth key within 3 evicts the least recently used (b).
  m.find_or_insert("d", 3, pinned)->id = 4;
  CHECK(order(m) == "dac" && m.size() == 3 && m.find("b") == nullptr);
  CHECK(m.find("d")->id == 4);
  // A pinned least-recently-used entry is skipped: the next one goes.
  m.find("c")->pinned = true;  // order now c d a
  m.find("d");                 // order d c a
  m.find("c");                 // order c d a: a is the oldest, unpinned
  CHECK(m.find_or_insert("e", 3, pinned) != nullptr && order(m) == "ecd");
  m.find("d");  // d e c: c is the oldest and pinned, e goes
  CHECK(m.find_or_insert("f", 3, pinned) != nullptr && order(m) == "fdc");
  // Everything pinned: no room, nothing inserted, nothing removed.
  m.find("f")->pinned = true;
  m.find("d")->pinned = true;
  CHECK(m.find_or_insert("g", 3, pinned) == nullptr && m.size() == 3 && m.find("g") == nullptr);
  // trim returns how many it removed and keeps pinned ones however far over.
  m.find("d")->pinned = false;
  CHECK(m.trim(1, pinned) == 1 && m.size() == 2 && m.find("d") == nullptr);
  CHECK(m.trim(0, pinned) == 0 && m.size() == 2);
  // max 0: a cache that holds nothing.
  contres::LruMap<Value> none;
  CHECK(none.find_or_insert("a", 0, pinned) == nullptr && none.size() == 0);
  CHECK(m.erase("f") && !m.erase("f") && m.size() == 1);
  m.clear();
  CHECK(m.size() == 0 && m.find("c") == nullptr);
  std::printf("ok\n");
  return 0;
}
