// CPU passes of the chains' runs (kernels.h, RunForwardPass / RunGatePass). Each pixel's `width` channels are
// contiguous in channels_last: a pass loads them once into the opmath type, runs the run's steps on them as at::vec
// vectors (the last one partial when the width is not a multiple of the vector width), keeping each step's input
// in a per-thread scratch row, and stores once per output. The work is split into items of whole pixels (within
// one sample when a norm needs per-sample sums), each item's sums kept apart and added in item order afterwards,
// so results do not depend on the threads. docs/math.md section 8 has the formulas.
#include "vec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../kernels.h"

namespace contres {
namespace {

using at::vec::Vectorized;

// How many lanes of a vector hold data: all of them (a compile-time constant: the flat loops) or the first n.
struct AllLanes {};

// n <= OpVec<E>::size() elements of E at p, widened to an opmath vector (the other lanes 0).
template <typename E>
cpu::OpVec<E> load_n(const E* p, int64_t n) {
  constexpr int64_t V = cpu::OpVec<E>::size();
  if (n == V) return cpu::load_vec(p);
  E lanes[V];
  for (int64_t i = 0; i < V; ++i) lanes[i] = i < n ? p[i] : E(0);
  return cpu::load_vec(lanes);
}
template <typename E>
cpu::OpVec<E> load_n(const E* p, AllLanes) {
  return cpu::load_vec(p);
}

// The first n lanes of v, rounded to E, at p.
template <typename E>
void store_n(E* p, const cpu::OpVec<E>& v, int64_t n) {
  constexpr int64_t V = cpu::OpVec<E>::size();
  if (n == V) return cpu::store_vec(p, v);
  E lanes[V];
  cpu::store_vec(lanes, v);
  std::memcpy(p, lanes, n * sizeof(E));
}
template <typename E>
void store_n(E* p, const cpu::OpVec<E>& v, AllLanes) {
  cpu::store_vec(p, v);
}

// Elements of a flat bit array (Mask layout: bit t of byte j is element 8j + t).
inline void put_bits(uint8_t* mask, int64_t e, unsigned bits, int64_t n) {
  for (int64_t t = 0; t < n; ++t)
    if ((bits >> t) & 1u) mask[(e + t) >> 3] |= static_cast<uint8_t>(1u << ((e + t) & 7));
}
inline unsigned get_bits(const uint8_t* mask, int64_t e, int64_t n) {
  unsigned bits = 0;
  for (int64_t t = 0; t < n; ++t) bits |= static_cast<unsigned>((mask[(e + t) >> 3] >> ((e + t) & 7)) & 1u) << t;
  return bits;
}

// act' of the run's activation as a vector: from its input x and output y (recomputed), from its kept output a
// (Value), or from the kept sign bits of its input (Mask). The rounding is PyTorch's backward's: relu and
// leaky_relu by the sign of x, tanh and sigmoid from y, softplus from x.
template <Act A, typename T>
Vectorized<T> act_df_recomputed(const Vectorized<T>& x, const Vectorized<T>& y) {
  if constexpr (A == Act::Relu || A == Act::LeakyRelu) {
    const Vectorized<T> positive = A == Act::Relu ? (x > Vectorized<T>(0)) | (x != x) : x > Vectorized<T>(0);
    return Vectorized<T>::blendv(Vectorized<T>(Activation<A>::template df_sign<T>(false)), Vectorized<T>(1), positive);
  } else if constexpr (A == Act::Softplus) {
    return cpu::softplus_df_vec(x);
  } else {
    return cpu::df_value_vec<A>(y);
  }
}
template <Act A, typename T>
Vectorized<T> act_df_from_bits(unsigned bits) {
  T lanes[Vectorized<T>::size()];
  for (int64_t t = 0; t < Vectorized<T>::size(); ++t) {
    if constexpr (A == Act::Relu || A == Act::LeakyRelu) lanes[t] = Activation<A>::template df_sign<T>((bits >> t) & 1u);
    else lanes[t] = T(1);  // unreachable: only relu and leaky_relu keep signs
  }
  return Vectorized<T>::loadu(lanes);
}
template <Act A>
unsigned act_sign_bits(const Vectorized<float>& v) {
  if constexpr (A == Act::Relu || A == Act::LeakyRelu) return cpu::mask_bits<A>(v);
  else return 0;
}
template <Act A>
unsigned act_sign_bits(const Vectorized<double>& v) {
  if constexpr (A == Act::Relu || A == Act::LeakyRelu) return cpu::mask_bits<A>(v);
  else return 0;
}

// Pieces of the work: runs of whole pixels, within one sample when `by_sample` (a group norm's sums are per
// sample), else of a multiple of 8 pixels so that each owns whole bytes of a Mask.
struct Items {
  static constexpr int64_t kElements = 1 << 12;  // a block of this many opmath values per step stays in L1-L2
  // A sample up to this many values is one item: a group norm's sums are then formed on the block itself, in the
  // pass that uses them, with no sweep before it (its rows still fit the core's L2).
  static constexpr int64_t kSampleElements = 1 << 14;
  int64_t pixels, per_sample, chunk, per_b = 0, count;
  bool by_sample;
  Items(int64_t pixels_, int64_t batch, int64_t width, bool by_sample_)
      : pixels(pixels_), per_sample(batch > 0 ? pixels_ / batch : 0), by_sample(by_sample_) {
    chunk = std::max<int64_t>(8, (kElements / std::max<int64_t>(width, 1) + 7) / 8 * 8);
    if (by_sample && per_sample * width <= kSampleElements) chunk = std::max<int64_t>(per_sample, 1);
    if (by_sample) {
      per_b = per_sample == 0 ? 0 : (per_sample + chunk - 1) / chunk;
      count = batch * per_b;
    } else {
      count = (pixels + chunk - 1) / chunk;
    }
  }
  int64_t first(int64_t i) const { return by_sample ? (i / per_b) * per_sample + (i % per_b) * chunk : i * chunk; }
  int64_t size(int64_t i) const {
    return by_sample ? std::min(chunk, per_sample - (i % per_b) * chunk) : std::min(chunk, pixels - i * chunk);
  }
  int64_t sample(int64_t i) const { return by_sample ? i / per_b : -1; }
  // Each sample is one item: its statistics and sums come from the block itself.
  bool whole_samples() const { return by_sample && per_b == 1; }
};

// The run's steps with this row's parameters in the opmath type T, each row padded to Wp (a multiple of the
// vector width) with zeros.
template <typename T>
struct Program {
  using Vec = Vectorized<T>;
  static constexpr int64_t V = Vec::size();
  const RunSpec& run;
  int64_t W, Wp;
  std::vector<std::vector<T>> rows;  // per step: Bias: shift; Norm affine: scale then shift (2 Wp)
  Vec tail;                          // 1 on the lanes of the last vector that hold channels, 0 past them

  Program(const RunSpec& r, const std::vector<at::Tensor>& params)
      : run(r), W(r.width.expect_int()), Wp((W + V - 1) / V * V), rows(r.steps.size()) {
    auto widened = [&](const at::Tensor& t, std::vector<T>& into, int64_t offset) {
      const at::Tensor v = t.to(at::kCPU, c10::CppTypeToScalarType<T>::value).contiguous();
      TORCH_CHECK(v.numel() == W, "contres: internal error: a run parameter of ", v.numel(), " entries for width ", W);
      std::copy(v.const_data_ptr<T>(), v.const_data_ptr<T>() + W, into.begin() + offset);
    };
    for (size_t s = 0; s < r.steps.size(); ++s) {
      const RunStep& step = r.steps[s];
      if (step.param < 0) continue;
      const bool pair = step.kind == Stage::Norm;
      rows[s].assign((pair ? 2 : 1) * Wp, T(0));
      widened(params.at(step.param), rows[s], 0);
      if (pair) widened(params.at(step.param + 1), rows[s], Wp);
    }
    T lanes[V];
    for (int64_t i = 0; i < V; ++i) lanes[i] = W % V == 0 || i < W % V ? T(1) : T(0);
    tail = Vec::loadu(lanes);
  }
  int64_t steps() const { return static_cast<int64_t>(run.steps.size()); }
  // Lanes of the vector at channel c that hold channels.
  int64_t lanes(int64_t c) const { return std::min<int64_t>(V, W - c); }
  Vec masked(const Vec& v, int64_t c) const { return c + V > W ? v * tail : v; }
  const T* shift(int64_t s) const { return rows[s].data(); }
  const T* scale(int64_t s) const { return rows[s].empty() ? nullptr : rows[s].data(); }
  const T* norm_shift(int64_t s) const { return rows[s].data() + Wp; }
};

// Per channel, the sums of x - x_first and of its square over the n pixels of a block row set (x_first: the first
// pixel's value), for a group norm's statistics.
template <typename T>
void shifted_moments(const T* x, int64_t n, int64_t Wp, T* shift, T* s1, T* s2) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  std::copy(x, x + Wp, shift);
  for (int64_t c = 0; c < Wp; c += V) {
    const Vec sh0 = Vec::loadu(shift + c);
    Vec a1(0), a2(0);
    for (int64_t p = 0; p < n; ++p) {
      const Vec dv = Vec::loadu(x + p * Wp + c) - sh0;
      a1 = a1 + dv, a2 = at::vec::fmadd(dv, dv, a2);
    }
    a1.store(s1 + c), a2.store(s2 + c);
  }
}

// Merges pieces of one group (each: k values with shifted sums shift, a1, a2) by Chan's rule, in double.
struct GroupMoments {
  double n = 0, mean = 0, m2 = 0;
  void add(double k, double shift, double a1, double a2) {
    const double piece_mean = shift + a1 / k, piece_m2 = std::max(0.0, a2 - a1 * a1 / k);
    const double total = n + k, delta = piece_mean - mean;
    mean += delta * k / total;
    m2 += piece_m2 + delta * delta * n * k / total;
    n = total;
  }
  double rstd(double eps) const { return 1.0 / std::sqrt(m2 / n + eps); }
};

// A group norm's statistics for one sample as per-channel rows: mean and 1 / std (forward), and in the backward
// the means over the group of dxhat and dxhat * xhat.
template <typename T>
struct SampleRows {
  std::vector<std::vector<T>> mean, rstd, m1, m2;  // per step (empty unless grouped)
  explicit SampleRows(size_t steps) : mean(steps), rstd(steps), m1(steps), m2(steps) {}

  // Step s's statistics from the n pixels of x, the whole of sample b: written to stats (B, groups, 2) and
  // into the rows.
  void set_stats(const Program<T>& prog, int64_t s, const T* x, int64_t n, const at::Tensor& stats, int64_t b) {
    const RunStep& step = prog.run.steps[s];
    const int64_t per = prog.W / step.groups, Wp = prog.Wp;
    std::vector<T> sums(3 * Wp);
    shifted_moments(x, n, Wp, sums.data(), sums.data() + Wp, sums.data() + 2 * Wp);
    T* out = stats.mutable_data_ptr<T>() + b * step.groups * 2;
    mean[s].assign(Wp, T(0)), rstd[s].assign(Wp, T(0));
    for (int64_t g = 0; g < step.groups; ++g) {
      GroupMoments m;
      for (int64_t c = g * per; c < (g + 1) * per; ++c) m.add(n, sums[c], sums[Wp + c], sums[2 * Wp + c]);
      out[2 * g] = static_cast<T>(m.mean), out[2 * g + 1] = static_cast<T>(m.rstd(step.eps));
      for (int64_t c = g * per; c < (g + 1) * per; ++c) mean[s][c] = out[2 * g], rstd[s][c] = out[2 * g + 1];
    }
  }

  // Step s's backward means over each group of the per-channel sums s1, s2 of n pixels, into m1, m2.
  void set_means(const Program<T>& prog, int64_t s, const T* s1, const T* s2, int64_t n) {
    const RunStep& step = prog.run.steps[s];
    const int64_t per = prog.W / step.groups;
    m1[s].assign(prog.Wp, T(0)), m2[s].assign(prog.Wp, T(0));
    const double count = static_cast<double>(per * n);
    for (int64_t g = 0; g < step.groups; ++g) {
      double a1 = 0, a2 = 0;
      for (int64_t c = g * per; c < (g + 1) * per; ++c) a1 += s1[c], a2 += s2[c];
      for (int64_t c = g * per; c < (g + 1) * per; ++c)
        m1[s][c] = static_cast<T>(a1 / count), m2[s][c] = static_cast<T>(a2 / count);
    }
  }

  // From the (B, groups, 2) statistics of each grouped step, for sample b.
  void load_stats(const Program<T>& prog, const std::vector<at::Tensor>& stats, int64_t b, int64_t upto = -1) {
    for (int64_t s = 0; s < (upto < 0 ? prog.steps() : upto); ++s) {
      const RunStep& step = prog.run.steps[s];
      if (!step.grouped() || !stats[s].defined()) continue;
      const T* st = stats[s].const_data_ptr<T>() + b * step.groups * 2;
      const int64_t per = prog.W / step.groups;
      mean[s].assign(prog.Wp, T(0)), rstd[s].assign(prog.Wp, T(0));
      for (int64_t g = 0; g < step.groups; ++g)
        for (int64_t c = g * per; c < (g + 1) * per; ++c) mean[s][c] = st[2 * g], rstd[s][c] = st[2 * g + 1];
    }
  }
};

// One item's rows in the opmath type, pixel after pixel, each padded to Wp: the input of each step (x(s), s = 0 ..
// steps; x(steps) is the run's output), the gradient d, and the tv steps' 1 / r per pixel. A step runs over the
// whole block (channels outer, pixels inner where each channel has its own constants, so they and the sums stay
// in registers), which keeps the loops long and the rows in the core's cache.
template <typename T>
struct Block {
  int64_t P, Wp, steps;
  std::unique_ptr<T[]> xs, d, inv_r;  // every element a pass reads is written first (the pads by load_n)
  Block(const Program<T>& prog, int64_t pixels)
      : P(pixels), Wp(prog.Wp), steps(prog.steps()), xs(new T[(steps + 1) * P * Wp]), d(new T[P * Wp]),
        inv_r(new T[std::max<int64_t>(steps, 1) * P]) {}
  T* x(int64_t s) { return xs.get() + s * P * Wp; }
  T* r(int64_t s) { return inv_r.get() + s * P; }
};

// fn(block offset, data offset, lanes) for each vector of n pixels: one flat loop when the width fills whole
// vectors (the block rows are then the data's own layout), else pixel by pixel with a partial last vector.
template <typename T, typename Fn>
void for_vectors(const Program<T>& prog, int64_t n, const Fn& fn) {
  constexpr int64_t V = Vectorized<T>::size();
  if (prog.W == prog.Wp) {
    for (int64_t i = 0; i < n * prog.W; i += V) fn(i, i, AllLanes{});
    return;
  }
  for (int64_t p = 0; p < n; ++p)
    for (int64_t c = 0; c < prog.W; c += V) fn(p * prog.Wp + c, p * prog.W + c, prog.lanes(c));
}

// The time map's offset of data offset i of a block from pixel p0: the map repeats every HW pixels.
struct TimeMapRows {
  int64_t base, period;
  TimeMapRows(int64_t p0, int64_t HW, int64_t W) : base((p0 % HW) * W), period(HW * W) {}
  int64_t at(int64_t i) const {
    int64_t t = base + i;
    while (t >= period) t -= period;
    return t;
  }
};

// x(0) = the n pixels of `in` from pixel p0 (+ the time map), then steps [0, upto) forward. `mask` takes the sign
// bits of the activation's input (element e of the flat data: bit e) when set.
// With `inline_stats` (the block is one whole sample, `sample`), each group norm's statistics are formed from the
// block as it is reached, written to its stats tensor and into rows.
template <typename T, Act A, typename In>
void block_forward(const Program<T>& prog, SampleRows<T>& rows, Block<T>& blk, const In* in, const T* tmap,
                   int64_t HW, int64_t p0, int64_t n, int64_t upto, uint8_t* mask = nullptr,
                   const std::vector<at::Tensor>* inline_stats = nullptr, int64_t sample = -1) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t W = prog.W, Wp = prog.Wp, flat = n * Wp;
  T* x0 = blk.x(0);
  const In* src = in + p0 * W;
  if (tmap) {
    const TimeMapRows rows_of_t(p0, HW, W);
    for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) {
      (load_n(src + di, k) + load_n(tmap + rows_of_t.at(di), k)).store(x0 + bi);
    });
  } else {
    for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) { load_n(src + di, k).store(x0 + bi); });
  }
  for (int64_t s = 0; s < upto; ++s) {
    const RunStep& step = prog.run.steps[s];
    const T* x = blk.x(s);
    T* y = blk.x(s + 1);
    switch (step.kind) {
      case Stage::Bias:
        for (int64_t c = 0; c < Wp; c += V) {
          const Vec shift = Vec::loadu(prog.shift(s) + c);
          for (int64_t p = 0; p < n; ++p) (Vec::loadu(x + p * Wp + c) + shift).store(y + p * Wp + c);
        }
        break;
      case Stage::Neg:
        for (int64_t i = 0; i < flat; i += V) Vec::loadu(x + i).neg().store(y + i);
        break;
      case Stage::Act:
        if (mask) {
          for (int64_t p = 0; p < n; ++p)
            for (int64_t c = 0; c < W; c += V)
              put_bits(mask, (p0 + p) * W + c, act_sign_bits<A>(Vec::loadu(x + p * Wp + c)), prog.lanes(c));
        }
        for (int64_t i = 0; i < flat; i += V) cpu::act_vec<A>(Vec::loadu(x + i)).store(y + i);
        break;
      case Stage::Norm: {
        const T* gamma = prog.scale(s);
        if (!step.grouped()) {  // tv: each pixel's length
          T* inv_r = blk.r(s);
          for (int64_t p = 0; p < n; ++p) {
            Vec ss(0);
            for (int64_t c = 0; c < Wp; c += V) {
              const Vec v = prog.masked(Vec::loadu(x + p * Wp + c), c);
              ss = at::vec::fmadd(v, v, ss);
            }
            inv_r[p] = T(1) / std::sqrt(at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, ss) +
                                        static_cast<T>(step.eps));
          }
          for (int64_t c = 0; c < Wp; c += V) {
            const Vec g = gamma ? Vec::loadu(gamma + c) : Vec(1), beta = gamma ? Vec::loadu(prog.norm_shift(s) + c) : Vec(0);
            for (int64_t p = 0; p < n; ++p)
              at::vec::fmadd(Vec::loadu(x + p * Wp + c) * Vec(inv_r[p]), g, beta).store(y + p * Wp + c);
          }
        } else {
          if (inline_stats) rows.set_stats(prog, s, x, n, (*inline_stats)[s], sample);
          for (int64_t c = 0; c < Wp; c += V) {
            const Vec mean = Vec::loadu(rows.mean[s].data() + c), rstd = Vec::loadu(rows.rstd[s].data() + c);
            const Vec g = gamma ? Vec::loadu(gamma + c) * rstd : rstd;
            const Vec beta = gamma ? Vec::loadu(prog.norm_shift(s) + c) : Vec(0);
            for (int64_t p = 0; p < n; ++p)
              at::vec::fmadd(Vec::loadu(x + p * Wp + c) - mean, g, beta).store(y + p * Wp + c);
          }
        }
        break;
      }
      case Stage::Conv:
      case Stage::ConvT:
        TORCH_CHECK(false, "contres: internal error: a convolution inside a run");
    }
  }
}

// Per-item sums of one row of channels each (parameter gradients, a norm's partial moments), added in item order.
template <typename T>
struct ItemSums {
  int64_t rows, Wp;
  std::vector<T> data;  // (items, rows, Wp)
  ItemSums(int64_t items, int64_t rows_, int64_t Wp_) : rows(rows_), Wp(Wp_), data(items * rows_ * Wp_, T(0)) {}
  T* at(int64_t item, int64_t row) { return data.data() + (item * rows + row) * Wp; }
  // The total of row `row` over the items [begin, end), in order.
  std::vector<double> total(int64_t row, int64_t begin, int64_t end) {
    std::vector<double> t(Wp, 0.0);
    for (int64_t i = begin; i < end; ++i) {
      const T* r = at(i, row);
      for (int64_t c = 0; c < Wp; ++c) t[c] += static_cast<double>(r[c]);
    }
    return t;
  }
};

// The run's shape as the passes see it: its data, items, and the pieces each pass reads.
struct Shape {
  int64_t W, pixels, HW;
  bool grouped;
};

template <typename T>
Shape shape_of(const Program<T>& prog, int64_t numel, int64_t batch) {
  Shape sh;
  sh.W = prog.W, sh.pixels = numel / prog.W, sh.HW = sh.pixels / std::max<int64_t>(batch, 1), sh.grouped = false;
  for (const RunStep& st : prog.run.steps) sh.grouped = sh.grouped || st.grouped();
  return sh;
}

// A grouped norm's statistics: per item and channel, the sums of x - x_first and its square (x_first: the
// channel's value at the item's first pixel), merged per sample and group in double with Chan's rule.
template <typename T, Act A, typename In>
void norm_statistics(const Program<T>& prog, const Items& items, const Shape& sh, int64_t s, const In* in,
                     const T* tmap, int64_t batch, const std::vector<at::Tensor>& all_stats) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t Wp = prog.Wp;
  ItemSums<T> sums(items.count, 3, Wp);  // shift, sum of x - shift, sum of (x - shift)^2
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    Block<T> blk(prog, items.chunk);
    SampleRows<T> rows(prog.run.steps.size());
    int64_t loaded = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = items.sample(i), p0 = items.first(i), n = items.size(i);
      if (b != loaded) rows.load_stats(prog, all_stats, b, s), loaded = b;
      block_forward<T, A, In>(prog, rows, blk, in, tmap, sh.HW, p0, n, s);
      shifted_moments(blk.x(s), n, Wp, sums.at(i, 0), sums.at(i, 1), sums.at(i, 2));
    }
  });
  const RunStep& step = prog.run.steps[s];
  const int64_t per = prog.W / step.groups;
  T* out = all_stats[s].mutable_data_ptr<T>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t g = 0; g < step.groups; ++g) {
      GroupMoments m;  // merged over (item, channel) pieces
      for (int64_t i = b * items.per_b; i < (b + 1) * items.per_b; ++i)
        for (int64_t c = g * per; c < (g + 1) * per; ++c)
          m.add(static_cast<double>(items.size(i)), sums.at(i, 0)[c], sums.at(i, 1)[c], sums.at(i, 2)[c]);
      out[2 * (b * step.groups + g)] = static_cast<T>(m.mean);
      out[2 * (b * step.groups + g) + 1] = static_cast<T>(m.rstd(step.eps));
    }
  }
}

template <typename Fn>
void dispatch_run_dtypes(at::ScalarType state, at::ScalarType conv, bool in_is_state, const char* pass, const Fn& fn) {
  cpu::dispatch_dtypes(state, conv, pass, [&](auto types) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    if (in_is_state) fn(types, S{});
    else fn(types, L{});
  });
}

// ------------------------------------------------------------------------------------------------- forward

template <typename S, typename L, typename In, Act A>
void run_forward(const RunForwardPass& a) {
  using T = at::opmath_type<S>;
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const RunSpec& run = *a.run;
  const Program<T> prog(run, a.params);
  const Shape sh = shape_of(prog, a.in.numel(), a.batch);
  const int64_t W = sh.W, Wp = prog.Wp, ns = prog.steps();
  const Items items(sh.pixels, a.batch, W, sh.grouped);
  const In* in = a.in.const_data_ptr<In>();
  const T* tmap = a.time_map.defined() ? a.time_map.const_data_ptr<T>() : nullptr;
  std::vector<at::Tensor> stats = a.stats;
  stats.resize(run.steps.size());
  const bool inline_stats = items.whole_samples();
  if (!inline_stats)
    for (int64_t s = 0; s < ns; ++s)
      if (run.steps[s].grouped()) norm_statistics<T, A, In>(prog, items, sh, s, in, tmap, a.batch, stats);

  const Combination& comb = a.comb;
  const bool combine = comb.out.defined() || comb.out_low.defined();
  L* out = a.out.defined() ? a.out.mutable_data_ptr<L>() : nullptr;
  const Aux keep = a.keep.defined() ? run.keep : Aux::None;
  In* pre = keep == Aux::Pre ? a.keep.mutable_data_ptr<In>() : nullptr;
  L* value = keep == Aux::Value ? a.keep.mutable_data_ptr<L>() : nullptr;
  uint8_t* mask = keep == Aux::Mask ? a.keep.mutable_data_ptr<uint8_t>() : nullptr;
  S* o = comb.out.defined() ? comb.out.mutable_data_ptr<S>() : nullptr;
  L* o_low = comb.out_low.defined() ? comb.out_low.mutable_data_ptr<L>() : nullptr;
  S* o2 = comb.out2.defined() ? comb.out2.mutable_data_ptr<S>() : nullptr;
  const S* x0 = combine ? comb.x0.const_data_ptr<S>() : nullptr;
  const S* x1 = combine && comb.x1.defined() ? comb.x1.const_data_ptr<S>() : nullptr;
  const S* y0 = o2 ? comb.y0.const_data_ptr<S>() : nullptr;
  const Vec c0(static_cast<T>(comb.c0)), c1(static_cast<T>(comb.c1)), alpha(static_cast<T>(comb.alpha)),
      beta(static_cast<T>(comb.beta));

  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    Block<T> blk(prog, items.chunk);
    SampleRows<T> rows(run.steps.size());
    int64_t loaded = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = items.sample(i), p0 = items.first(i), n = items.size(i);
      if (sh.grouped && !inline_stats && b != loaded) rows.load_stats(prog, stats, b), loaded = b;
      if (mask) std::memset(mask + p0 * W / 8, 0, (n * W + 7) / 8);
      block_forward<T, A, In>(prog, rows, blk, in, tmap, sh.HW, p0, n, ns, mask, inline_stats ? &stats : nullptr, b);
      if (pre) std::memcpy(pre + p0 * W, in + p0 * W, n * W * sizeof(In));
      // Each output in a loop of its own (f stays in the core's cache between them): the combination reads its
      // operands' elements before it writes them, and out never aliases y0, nor out2 x0 or x1 (kernels.h).
      const T* f = blk.x(ns);
      const int64_t e0 = p0 * W;
      for (L* target : {out, value})
        if (target)
          for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) { store_n(target + e0 + di, Vec::loadu(f + bi), k); });
      if (combine) {
        for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) {
          const int64_t e = e0 + di;
          Vec acc = c0 * load_n(x0 + e, k);
          if (x1) acc = at::vec::fmadd(c1, load_n(x1 + e, k), acc);
          acc = at::vec::fmadd(alpha, Vec::loadu(f + bi), acc);
          if (o) store_n(o + e, acc, k);
          if (o_low) store_n(o_low + e, acc, k);
        });
      }
      if (o2)
        for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) {
          store_n(o2 + e0 + di, at::vec::fmadd(beta, Vec::loadu(f + bi), load_n(y0 + e0 + di, k)), k);
        });
    }
  });
}

// ------------------------------------------------------------------------------------------------ backward

// Which row of an item's ItemSums each parameter gradient of the run goes to.
struct GradRows {
  std::vector<int64_t> of_step;  // per step: its first row (-1: none); a norm's shift is the next row
  int64_t conv_bias = -1;
  int64_t count = 0;
};

template <typename S, typename L, typename In, Act A>
void run_gate(const RunGatePass& a) {
  using T = at::opmath_type<S>;
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const RunSpec& run = *a.run;
  const Program<T> prog(run, a.params);
  const Shape sh = shape_of(prog, a.g.numel(), a.batch);
  const int64_t W = sh.W, Wp = prog.Wp, ns = prog.steps();
  const Items items(sh.pixels, a.batch, W, sh.grouped);
  const bool last = a.lam.defined();
  const In* in = a.in.defined() ? a.in.const_data_ptr<In>() : nullptr;
  const T* tmap = a.time_map.defined() ? a.time_map.const_data_ptr<T>() : nullptr;
  const L* value = run.keep == Aux::Value && a.kept.defined() ? a.kept.const_data_ptr<L>() : nullptr;
  const uint8_t* mask = run.keep == Aux::Mask && a.kept.defined() ? a.kept.const_data_ptr<uint8_t>() : nullptr;
  TORCH_CHECK(in || !sh.grouped, "contres: internal error: a run with a norm recomputes from its input");
  const L* dy = last ? nullptr : a.dy.const_data_ptr<L>();
  const S* lam = last ? a.lam.const_data_ptr<S>() : nullptr;
  const L* mu = last && a.mu.defined() ? a.mu.const_data_ptr<L>() : nullptr;
  S* sum_out = a.sum_out.defined() ? a.sum_out.mutable_data_ptr<S>() : nullptr;
  const S* sum_in = sum_out ? (a.sum_in.defined() ? a.sum_in : a.lam).const_data_ptr<S>() : nullptr;
  L* g = a.g.mutable_data_ptr<L>();
  L* out = a.out.defined() ? a.out.mutable_data_ptr<L>() : nullptr;
  const Vec cmu(static_cast<T>(a.c_mu)), scale(static_cast<T>(a.scale));

  GradRows grad_rows;
  grad_rows.of_step.assign(ns, -1);
  for (int64_t s = 0; s < ns; ++s) {
    const RunStep& st = run.steps[s];
    if (st.param < 0 || static_cast<size_t>(st.param) >= a.param_grads.size() || !a.param_grads[st.param].defined())
      continue;
    grad_rows.of_step[s] = grad_rows.count;
    grad_rows.count += st.kind == Stage::Norm ? 2 : 1;
  }
  if (a.conv_bias_grad.defined()) grad_rows.conv_bias = grad_rows.count++;

  std::vector<at::Tensor> stats = a.stats;
  stats.resize(ns);
  // Per grouped step: per sample and group, the means of dxhat and dxhat * xhat, (B, groups, 2).
  std::vector<std::vector<T>> group_means(ns);

  auto load_rows = [&](SampleRows<T>& rows, int64_t b) {
    rows.load_stats(prog, stats, b);
    for (int64_t s = 0; s < ns; ++s) {
      const RunStep& st = run.steps[s];
      if (!st.grouped() || group_means[s].empty()) continue;
      const int64_t per = W / st.groups;
      rows.m1[s].assign(Wp, T(0)), rows.m2[s].assign(Wp, T(0));
      const T* gm = group_means[s].data() + 2 * b * st.groups;
      for (int64_t gi = 0; gi < st.groups; ++gi)
        for (int64_t c = gi * per; c < (gi + 1) * per; ++c) rows.m1[s][c] = gm[2 * gi], rows.m2[s][c] = gm[2 * gi + 1];
    }
  };

  // The backward of the n pixels of an item from its output down to step `stop`: the final pass (stop = 0,
  // sums = nullptr) stores g, the running sum and the recomputed output and adds the parameter gradients into
  // `grads`; a sweep (stop: a grouped step, sums: its two rows) adds that step's dxhat and dxhat * xhat and ends.
  // With whole samples (items.whole_samples()) the final pass forms each group norm's sums on the block itself.
  const bool inline_sums = items.whole_samples();
  auto backward = [&](Block<T>& blk, SampleRows<T>& rows, int64_t p0, int64_t n, int64_t stop, T* sum1, T* sum2,
                      ItemSums<T>* grads, int64_t item) {
    const bool final_pass = sum1 == nullptr;
    if (in) block_forward<T, A, In>(prog, rows, blk, in, tmap, sh.HW, p0, n, ns);
    T* d = blk.d.get();
    const int64_t e0 = p0 * W;
    if (!last) {
      for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) { load_n(dy + e0 + di, k).store(d + bi); });
    } else if (!mu) {
      for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) { (load_n(lam + e0 + di, k) * scale).store(d + bi); });
    } else {
      const bool sum = sum_out && final_pass;
      for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) {
        const int64_t e = e0 + di;
        const Vec m = load_n(mu + e, k);
        (at::vec::fmadd(cmu, m, load_n(lam + e, k)) * scale).store(d + bi);
        if (sum) store_n(sum_out + e, load_n(sum_in + e, k) + m, k);  // after its mu (it may alias mu)
      });
    }
    const int64_t flat = n * Wp;
    for (int64_t s = ns - 1; s >= stop; --s) {
      const RunStep& st = run.steps[s];
      const int64_t gr = grad_rows.of_step[s];
      T* acc = grads && gr >= 0 ? grads->at(item, gr) : nullptr;
      const T* x = in ? blk.x(s) : nullptr;
      switch (st.kind) {
        case Stage::Bias:
          if (acc)
            for (int64_t c = 0; c < Wp; c += V) {
              Vec sum(0);
              for (int64_t p = 0; p < n; ++p) sum = sum + Vec::loadu(d + p * Wp + c);
              (Vec::loadu(acc + c) + sum).store(acc + c);
            }
          break;
        case Stage::Neg:
          for (int64_t i = 0; i < flat; i += V) Vec::loadu(d + i).neg().store(d + i);
          break;
        case Stage::Act:
          if (in) {
            const T* y = blk.x(s + 1);
            for (int64_t i = 0; i < flat; i += V)
              (Vec::loadu(d + i) * act_df_recomputed<A>(Vec::loadu(x + i), Vec::loadu(y + i))).store(d + i);
          } else if (value || mask) {
            for (int64_t p = 0; p < n; ++p) {
              const int64_t e = (p0 + p) * W;
              for (int64_t c = 0; c < W; c += V) {
                Vec df;
                if (value) {
                  const Vec av = load_n(value + e + c, prog.lanes(c));
                  df = act_df_recomputed<A>(av, av);
                } else {
                  df = act_df_from_bits<A, T>(get_bits(mask, e + c, prog.lanes(c)));
                }
                (Vec::loadu(d + p * Wp + c) * df).store(d + p * Wp + c);
              }
            }
          }  // else: the identity
          break;
        case Stage::Norm: {
          const T* gamma = prog.scale(s);
          T* acc_b = acc ? acc + Wp : nullptr;  // the norm shift's row follows its scale's
          if (!st.grouped()) {
            const T* inv_r = blk.r(s);
            if (gamma) {
              for (int64_t c = 0; c < Wp; c += V) {
                const Vec gv = Vec::loadu(gamma + c);
                Vec aw(0), ab(0);
                for (int64_t p = 0; p < n; ++p) {
                  const Vec dv = Vec::loadu(d + p * Wp + c);
                  aw = at::vec::fmadd(dv, Vec::loadu(x + p * Wp + c) * Vec(inv_r[p]), aw), ab = ab + dv;
                  (dv * gv).store(d + p * Wp + c);
                }
                if (acc) (Vec::loadu(acc + c) + aw).store(acc + c), (Vec::loadu(acc_b + c) + ab).store(acc_b + c);
              }
            }
            for (int64_t p = 0; p < n; ++p) {  // d = (d - n (n . d)) / r, n = x / r
              const Vec iv(inv_r[p]);
              Vec dot(0);
              for (int64_t c = 0; c < Wp; c += V)
                dot = at::vec::fmadd(prog.masked(Vec::loadu(x + p * Wp + c) * iv, c), Vec::loadu(d + p * Wp + c), dot);
              const Vec dt(at::vec::vec_reduce_all<T>([](Vec& u, Vec& w) { return u + w; }, dot));
              for (int64_t c = 0; c < Wp; c += V) {
                const Vec nv = Vec::loadu(x + p * Wp + c) * iv;
                ((Vec::loadu(d + p * Wp + c) - nv * dt) * iv).store(d + p * Wp + c);
              }
            }
          } else {
            // Adds the group's sums of d' = gamma d and d' xhat over the block, per channel, into t1 and t2.
            auto group_sums = [&](T* t1, T* t2) {
              for (int64_t c = 0; c < Wp; c += V) {
                const Vec mean = Vec::loadu(rows.mean[s].data() + c), rstd = Vec::loadu(rows.rstd[s].data() + c);
                const Vec gv = gamma ? Vec::loadu(gamma + c) : Vec(1);
                Vec s1(0), s2(0);
                for (int64_t p = 0; p < n; ++p) {
                  const Vec dv = Vec::loadu(d + p * Wp + c) * gv;
                  s1 = s1 + dv, s2 = at::vec::fmadd(dv, (Vec::loadu(x + p * Wp + c) - mean) * rstd, s2);
                }
                (Vec::loadu(t1 + c) + s1).store(t1 + c), (Vec::loadu(t2 + c) + s2).store(t2 + c);
              }
            };
            if (s == stop && sum1) {  // a sweep: this step's sums are what it is for
              group_sums(sum1, sum2);
              return;
            }
            if (inline_sums) {
              std::vector<T> t(2 * Wp, T(0));
              group_sums(t.data(), t.data() + Wp);
              rows.set_means(prog, s, t.data(), t.data() + Wp, n);
            }
            for (int64_t c = 0; c < Wp; c += V) {
              const Vec mean = Vec::loadu(rows.mean[s].data() + c), rstd = Vec::loadu(rows.rstd[s].data() + c);
              const Vec gv = gamma ? Vec::loadu(gamma + c) : Vec(1);
              const Vec m1 = Vec::loadu(rows.m1[s].data() + c), m2 = Vec::loadu(rows.m2[s].data() + c);
              Vec aw(0), ab(0);
              for (int64_t p = 0; p < n; ++p) {
                const Vec xhat = (Vec::loadu(x + p * Wp + c) - mean) * rstd;
                Vec dv = Vec::loadu(d + p * Wp + c);
                if (gamma) aw = at::vec::fmadd(dv, xhat, aw), ab = ab + dv, dv = dv * gv;
                (rstd * (dv - m1 - xhat * m2)).store(d + p * Wp + c);
              }
              if (acc) (Vec::loadu(acc + c) + aw).store(acc + c), (Vec::loadu(acc_b + c) + ab).store(acc_b + c);
            }
          }
          break;
        }
        case Stage::Conv:
        case Stage::ConvT:
          TORCH_CHECK(false, "contres: internal error: a convolution inside a run");
      }
    }
    if (!final_pass) return;
    T* acc = grads && grad_rows.conv_bias >= 0 ? grads->at(item, grad_rows.conv_bias) : nullptr;
    if (acc)
      for (int64_t c = 0; c < Wp; c += V) {
        Vec sum(0);
        for (int64_t p = 0; p < n; ++p) sum = sum + Vec::loadu(d + p * Wp + c);
        (Vec::loadu(acc + c) + sum).store(acc + c);
      }
    for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) { store_n(g + e0 + di, Vec::loadu(d + bi), k); });
    if (out) {
      const T* y = blk.x(ns);
      for_vectors(prog, n, [&](int64_t bi, int64_t di, auto k) { store_n(out + e0 + di, Vec::loadu(y + bi), k); });
    }
  };

  // The group sums of each grouped step, from the last step's to the first's: a step's sweep needs those of the
  // steps after it.
  for (int64_t s = ns - 1; s >= 0 && !inline_sums; --s) {
    const RunStep& st = run.steps[s];
    if (!st.grouped()) continue;
    ItemSums<T> sums(items.count, 2, Wp);
    at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
      Block<T> blk(prog, items.chunk);
      SampleRows<T> rows(run.steps.size());
      int64_t loaded = -1;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = items.sample(i);
        if (b != loaded) load_rows(rows, b), loaded = b;
        backward(blk, rows, items.first(i), items.size(i), s, sums.at(i, 0), sums.at(i, 1), nullptr, i);
      }
    });
    const int64_t per = W / st.groups;
    const double count = static_cast<double>(per * sh.HW);
    group_means[s].assign(a.batch * st.groups * 2, T(0));
    for (int64_t b = 0; b < a.batch; ++b) {
      const std::vector<double> t1 = sums.total(0, b * items.per_b, (b + 1) * items.per_b);
      const std::vector<double> t2 = sums.total(1, b * items.per_b, (b + 1) * items.per_b);
      for (int64_t gi = 0; gi < st.groups; ++gi) {
        double a1 = 0, a2 = 0;
        for (int64_t c = gi * per; c < (gi + 1) * per; ++c) a1 += t1[c], a2 += t2[c];
        group_means[s][2 * (b * st.groups + gi)] = static_cast<T>(a1 / count);
        group_means[s][2 * (b * st.groups + gi) + 1] = static_cast<T>(a2 / count);
      }
    }
  }

  ItemSums<T> grads(items.count, grad_rows.count, Wp);
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    Block<T> blk(prog, items.chunk);
    SampleRows<T> rows(run.steps.size());
    int64_t loaded = -2;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = items.sample(i);
      if (sh.grouped && b != loaded) load_rows(rows, b), loaded = b;
      backward(blk, rows, items.first(i), items.size(i), 0, nullptr, nullptr, &grads, i);
    }
  });

  auto write = [&](const at::Tensor& target, int64_t row) {
    const std::vector<double> t = grads.total(row, 0, items.count);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(), "contres_run_grad", [&] {
      scalar_t* o = target.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < W; ++c) o[c] = static_cast<scalar_t>(t[c]);
    });
  };
  for (int64_t s = 0; s < ns; ++s) {
    const int64_t gr = grad_rows.of_step[s];
    if (gr < 0) continue;
    const RunStep& st = run.steps[s];
    write(a.param_grads[st.param], gr);
    if (st.kind == Stage::Norm) write(a.param_grads[st.param + 1], gr + 1);
  }
  if (grad_rows.conv_bias >= 0) write(a.conv_bias_grad, grad_rows.conv_bias);
}

}  // namespace

void run_forward_pass_cpu(const RunForwardPass& a) {
  const bool first = a.run->conv < 0;
  const at::ScalarType conv = first ? a.out.scalar_type() : a.in.scalar_type();
  const at::ScalarType state = first ? a.in.scalar_type() : a.comb.state_dtype(conv);
  dispatch_run_dtypes(state, conv, first, "contres_run_forward_cpu", [&](auto types, auto in_tag) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    using In = decltype(in_tag);
    dispatch_activation(a.run->shape.act, [&](auto act) { run_forward<S, L, In, decltype(act)::value>(a); });
  });
}

void run_gate_pass_cpu(const RunGatePass& a) {
  TORCH_CHECK(!a.sum_out.defined() || a.mu.defined(), "contres: internal error: the gate's running sum adds mu");
  const bool first = a.run->conv < 0;
  const at::ScalarType conv = a.g.scalar_type();
  const at::ScalarType state = a.lam.defined() ? a.lam.scalar_type() : first && a.in.defined() ? a.in.scalar_type() : conv;
  dispatch_run_dtypes(state, conv, first, "contres_run_gate_cpu", [&](auto types, auto in_tag) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    using In = decltype(in_tag);
    dispatch_activation(a.run->shape.act, [&](auto act) { run_gate<S, L, In, decltype(act)::value>(a); });
  });
}

}  // namespace contres
