#include "paths.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

namespace contres {
namespace {

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::mutex& settings_mutex() {
  static std::mutex m;
  return m;
}

PathSettings& settings() {  // read once from the environment; an invalid value raises at first use
  static PathSettings s{parse<ConvPath>(env_or("CONTRES_CUDA_CONV", "auto")),
                        parse<GraphMode>(env_or("CONTRES_CUDA_GRAPHS", "auto"))};
  return s;
}

std::atomic<int64_t> run_passes_setting{static_cast<int64_t>(RunPasses::Auto)};

std::atomic<int64_t>& cpu_conv_setting() {  // read once from the environment; an invalid value raises at first use
  static std::atomic<int64_t> s{static_cast<int64_t>(parse<CpuConvPath>(env_or("CONTRES_CPU_CONV", "auto")))};
  return s;
}

thread_local std::string last_forward = "none", last_backward = "none";

}  // namespace

PathSettings path_settings() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  return settings();
}

void set_path_settings(const std::string& conv, const std::string& graphs) {
  const PathSettings s{parse<ConvPath>(conv), parse<GraphMode>(graphs)};
  std::lock_guard<std::mutex> lock(settings_mutex());
  settings() = s;
}

CpuConvPath cpu_conv_path() { return static_cast<CpuConvPath>(cpu_conv_setting().load()); }
void set_cpu_conv_path(const std::string& conv) { cpu_conv_setting().store(static_cast<int64_t>(parse<CpuConvPath>(conv))); }
bool own_conv_chosen() { return cpu_conv_path() == CpuConvPath::Own; }

RunPasses run_passes() { return static_cast<RunPasses>(run_passes_setting.load()); }
void set_run_passes(const std::string& passes) {
  run_passes_setting.store(static_cast<int64_t>(parse<RunPasses>(passes)));
}

void record_path(Direction d, const std::string& path) { (d == Direction::Forward ? last_forward : last_backward) = path; }

std::string last_path(Direction d) { return d == Direction::Forward ? last_forward : last_backward; }

}  // namespace contres
