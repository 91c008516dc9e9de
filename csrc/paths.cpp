#include "paths.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

namespace contres {
namespace {

ConvPath parse_conv(const std::string& s) {
  if (s == "auto") return ConvPath::Auto;
  if (s == "aten") return ConvPath::Aten;
  if (s == "fused") return ConvPath::Fused;
  TORCH_CHECK_VALUE(false, "contres: the CUDA convolution path must be one of auto, aten, fused; got '", s, "'");
}

GraphMode parse_graphs(const std::string& s) {
  if (s == "auto") return GraphMode::Auto;
  if (s == "on") return GraphMode::On;
  if (s == "off") return GraphMode::Off;
  TORCH_CHECK_VALUE(false, "contres: CUDA graphs must be one of auto, on, off; got '", s, "'");
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::mutex& settings_mutex() {
  static std::mutex m;
  return m;
}

PathSettings& settings() {  // read once from the environment; an invalid value raises at first use
  static PathSettings s{parse_conv(env_or("CONTRES_CUDA_CONV", "auto")),
                        parse_graphs(env_or("CONTRES_CUDA_GRAPHS", "auto"))};
  return s;
}

thread_local std::string last_forward = "none", last_backward = "none";

}  // namespace

PathSettings path_settings() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  return settings();
}

void set_path_settings(const std::string& conv, const std::string& graphs) {
  const PathSettings s{parse_conv(conv), parse_graphs(graphs)};
  std::lock_guard<std::mutex> lock(settings_mutex());
  settings() = s;
}

std::string conv_path_name(ConvPath p) {
  switch (p) {
    case ConvPath::Auto: return "auto";
    case ConvPath::Aten: return "aten";
    case ConvPath::Fused: return "fused";
  }
  return "?";
}

std::string graph_mode_name(GraphMode g) {
  switch (g) {
    case GraphMode::Auto: return "auto";
    case GraphMode::On: return "on";
    case GraphMode::Off: return "off";
  }
  return "?";
}

void record_path(Direction d, const std::string& path) { (d == Direction::Forward ? last_forward : last_backward) = path; }

std::string last_path(Direction d) { return d == Direction::Forward ? last_forward : last_backward; }

}  // namespace contres
