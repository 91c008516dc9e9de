// Values by string key in least-recently-used order: the bookkeeping of contres' bounded caches (the CUDA-graph
// cache, the fused cuDNN graphs' plan cache). Header-only and free of torch, so that tests/cpp can check it with
// the system compiler. Not thread-safe: each cache holds its own lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <utility>

namespace contres {

template <typename V>
class LruMap {
 public:
  // The value of key, now the most recently used; null when absent.
  V* find(const std::string& key) {
    const auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->second;
  }

  // The value of key, inserted (default-constructed) when absent, after making room for it within `max`
  // entries: least recently used first, skipping those pinned(value) keeps. Null when no room can be made
  // (max is 0, or every entry is pinned).
  template <typename Pinned>
  V* find_or_insert(const std::string& key, size_t max, const Pinned& pinned) {
    if (V* v = find(key)) return v;
    trim(max == 0 ? 0 : max - 1, pinned);
    if (order_.size() >= max) return nullptr;
    order_.emplace_front(key, V());
    index_.emplace(key, order_.begin());
    return &order_.front().second;
  }

  // Removes least recently used entries until at most max remain, skipping pinned ones; returns how many.
  template <typename Pinned>
  int64_t trim(size_t max, const Pinned& pinned) {
    int64_t removed = 0;
    for (auto it = order_.end(); order_.size() > max && it != order_.begin();) {
      --it;
      if (pinned(it->second)) continue;
      index_.erase(it->first);
      it = order_.erase(it);
      ++removed;
    }
    return removed;
  }

  bool erase(const std::string& key) {
    const auto it = index_.find(key);
    if (it == index_.end()) return false;
    order_.erase(it->second);
    index_.erase(it);
    return true;
  }

  size_t size() const { return order_.size(); }
  void clear() {
    index_.clear();
    order_.clear();
  }

  // f(key, value) for every entry, most recently used first.
  template <typename F>
  void for_each(F&& f) {
    for (auto& kv : order_) f(kv.first, kv.second);
  }
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& kv : order_) f(kv.first, kv.second);
  }

 private:
  std::list<std::pair<std::string, V>> order_;  // most recently used first
  std::unordered_map<std::string, typename std::list<std::pair<std::string, V>>::iterator> index_;
};

}  // namespace contres
