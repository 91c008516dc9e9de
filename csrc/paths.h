// Which implementation runs a call, and how a user chooses and sees it. On CUDA a call can run the convolutions on
// ATen (cuDNN) with the elementwise passes, or as fused cuDNN graphs, each either step by step or replayed from a
// CUDA graph of the whole direction. The choice: forced by set_cuda_paths (or the CONTRES_CUDA_CONV and
// CONTRES_CUDA_GRAPHS environment variables), else "auto".
#pragma once

#include <array>
#include <string>

#include "config.h"

namespace contres {

enum class ConvPath : int64_t { Auto, Aten, Fused };
enum class GraphMode : int64_t { Auto, On, Off };
template <> struct Names<ConvPath> {
  static constexpr const char* what = "the CUDA convolution path";
  static constexpr std::array<const char*, 3> all = {"auto", "aten", "fused"};
};
template <> struct Names<GraphMode> {
  static constexpr const char* what = "CUDA graphs";
  static constexpr std::array<const char*, 3> all = {"auto", "on", "off"};
};

struct PathSettings {
  ConvPath conv = ConvPath::Auto;
  GraphMode graphs = GraphMode::Auto;
};
PathSettings path_settings();
void set_path_settings(const std::string& conv, const std::string& graphs);  // parsed by parse<E> (config.h)

// The CPU convolution: ATen's (oneDNN), or contres' own (cpu/own_conv.h; float32). "auto" picks ATen's on every
// CPU measured so far (bench/cpu_conv.py: the own one ran 0.8-0.9x of oneDNN's on the AVX2-only EPYC); set by
// contres.set_cpu_paths or CONTRES_CPU_CONV.
enum class CpuConvPath : int64_t { Auto, Aten, Own };
template <> struct Names<CpuConvPath> {
  static constexpr const char* what = "the CPU convolution path";
  static constexpr std::array<const char*, 3> all = {"auto", "aten", "own"};
};
CpuConvPath cpu_conv_path();
void set_cpu_conv_path(const std::string& conv);
// Whether a CPU call runs the own convolution (where it serves its operands).
bool own_conv_chosen();

// The chains' run passes (kernels.h): the CPU kernels where the tensors are on the CPU ("auto"), or composed of
// ATen operations everywhere ("aten": what CUDA runs; the tests compare the two on the CPU).
enum class RunPasses : int64_t { Auto, Aten };
template <> struct Names<RunPasses> {
  static constexpr const char* what = "run passes";
  static constexpr std::array<const char*, 2> all = {"auto", "aten"};
};
RunPasses run_passes();
void set_run_passes(const std::string& passes);

enum class Direction { Forward, Backward };
// What the latest call on this thread ran, e.g. "cpu", "cuda:aten", "cuda:aten+graph".
void record_path(Direction d, const std::string& path);
std::string last_path(Direction d);

}  // namespace contres
