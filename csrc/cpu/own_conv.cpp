#include "own_conv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace contres {
namespace cpu {
namespace {

namespace blas = at::native::cpublas;

constexpr int64_t kTileRows = 8;       // output rows per GEMM: their accumulators stay in the core's cache
constexpr int64_t kImagesPerChunk = 8;  // the weight gradient's partial sums: one per chunk of images, in order

// One convolution's sizes: C input and Co output channels, k x k taps, padding p, padded rows of Wp pixels.
struct Geometry {
  int64_t B, C, H, W, Co, k, p, Hp, Wp;
  Geometry(const at::Tensor& x, int64_t out_channels, int64_t kernel)
      : B(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), Co(out_channels), k(kernel), p(kernel / 2),
        Hp(x.size(2) + 2 * (kernel / 2)), Wp(x.size(3) + 2 * (kernel / 2)) {}
  int64_t taps() const { return k * k; }
};

at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

// Image b of x (channels_last: H x W pixels of C values) into the interior of a zero-bordered padded buffer.
void pad_image(const float* x, const Geometry& g, int64_t b, float* pad) {
  for (int64_t h = 0; h < g.H; ++h)
    std::memcpy(pad + ((h + g.p) * g.Wp + g.p) * g.C, x + (b * g.H + h) * g.W * g.C, g.W * g.C * sizeof(float));
}

// y = conv(x, taps) (+ bias): taps (k^2, C, Co) contiguous; x and y channels_last.
void conv_images(const float* x, const float* taps, const float* bias, float* y, const Geometry& g) {
  at::parallel_for(0, g.B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> pad(g.Hp * g.Wp * g.C, 0.f);  // the border stays zero; each image overwrites the interior
    std::vector<float> acc(kTileRows * g.Wp * g.Co);
    for (int64_t b = b0; b < b1; ++b) {
      pad_image(x, g, b, pad.data());
      for (int64_t r0 = 0; r0 < g.H; r0 += kTileRows) {
        const int64_t rows = std::min(kTileRows, g.H - r0);
        const int64_t M = rows * g.Wp - 2 * g.p;  // padded pixels from the tile's first output to its last
        for (int64_t t = 0; t < g.taps(); ++t) {
          const float* A = pad.data() + ((r0 + t / g.k) * g.Wp + t % g.k) * g.C;
          blas::brgemm(M, g.Co, g.C, g.C, g.Co, g.Co, t > 0, A, taps + t * g.C * g.Co, acc.data(), false);
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* dst = y + ((b * g.H + r0 + r) * g.W) * g.Co;
          const float* src = acc.data() + r * g.Wp * g.Co;
          if (!bias) {
            std::memcpy(dst, src, g.W * g.Co * sizeof(float));
            continue;
          }
          for (int64_t w = 0; w < g.W; ++w)
            for (int64_t c = 0; c < g.Co; ++c) dst[w * g.Co + c] = src[w * g.Co + c] + bias[c];
        }
      }
    }
    blas::brgemm_release(false);
  });
}

// K (Co, C, k, k) as the taps conv_images reads: (k^2, C, Co).
at::Tensor taps_of(const at::Tensor& K) { return K.permute({2, 3, 1, 0}).contiguous(); }

}  // namespace

bool own_conv_supports(const at::Tensor& x, const at::Tensor& K) {
  return x.is_cpu() && K.is_cpu() && x.scalar_type() == at::kFloat && K.scalar_type() == at::kFloat &&
         x.dim() == 4 && K.dim() == 4 && K.size(1) == x.size(1) && K.size(2) == K.size(3) && K.size(2) % 2 == 1;
}

at::Tensor own_conv2d(const at::Tensor& x_in, const at::Tensor& K, const at::Tensor& b) {
  TORCH_CHECK(own_conv_supports(x_in, K), "contres: internal error: the own convolution does not serve these operands");
  const at::Tensor x = channels_last(x_in);
  const Geometry g(x, K.size(0), K.size(2));
  at::Tensor y = at::empty({g.B, g.Co, g.H, g.W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const at::Tensor taps = taps_of(K);
  const at::Tensor bias = b.defined() ? b.contiguous() : b;
  conv_images(x.const_data_ptr<float>(), taps.const_data_ptr<float>(), bias.defined() ? bias.const_data_ptr<float>()
                                                                                         : nullptr,
              y.mutable_data_ptr<float>(), g);
  return y;
}

at::Tensor own_conv_transpose2d(const at::Tensor& g, const at::Tensor& K) {
  // convT(g, K) = conv(g, K') with K'[ci, co] = K[co, ci] flipped in space (stride 1, same padding).
  return own_conv2d(g, K.flip({2, 3}).transpose(0, 1), at::Tensor());
}

at::Tensor own_conv_weight_grad(const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& K) {
  TORCH_CHECK(own_conv_supports(x_in, K), "contres: internal error: the own convolution does not serve these operands");
  const at::Tensor x = channels_last(x_in), gr = channels_last(g_in);
  const Geometry geo(x, K.size(0), K.size(2));
  const int64_t Mtot = geo.H * geo.Wp - 2 * geo.p;  // the padded-row positions of the outputs
  const int64_t chunks = (geo.B + kImagesPerChunk - 1) / kImagesPerChunk;
  const int64_t tap_size = geo.Co * geo.C;
  std::vector<float> partial(chunks * geo.taps() * tap_size);
  const float* xp = x.const_data_ptr<float>();
  const float* gp = gr.const_data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> pad(geo.Hp * geo.Wp * geo.C, 0.f);
    std::vector<float> gT(geo.Co * Mtot, 0.f);  // g of one image transposed, (Co, Mtot); the junk columns stay 0
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      float* out = partial.data() + chunk * geo.taps() * tap_size;
      const int64_t first = chunk * kImagesPerChunk, last = std::min(geo.B, first + kImagesPerChunk);
      for (int64_t b = first; b < last; ++b) {
        pad_image(xp, geo, b, pad.data());
        for (int64_t h = 0; h < geo.H; ++h)
          for (int64_t w = 0; w < geo.W; ++w) {
            const float* src = gp + ((b * geo.H + h) * geo.W + w) * geo.Co;
            const int64_t q = h * geo.Wp + w;
            for (int64_t c = 0; c < geo.Co; ++c) gT[c * Mtot + q] = src[c];
          }
        // dK_t (Co x C) += g^T (Co x Mtot) x the padded input shifted by tap t (Mtot x C)
        for (int64_t t = 0; t < geo.taps(); ++t) {
          const float* B = pad.data() + ((t / geo.k) * geo.Wp + t % geo.k) * geo.C;
          blas::brgemm(geo.Co, geo.C, Mtot, Mtot, geo.C, geo.C, b > first, gT.data(), B, out + t * tap_size, false);
        }
      }
    }
    blas::brgemm_release(false);
  });
  at::Tensor total = at::zeros({geo.taps(), geo.Co, geo.C}, x.options());
  float* tp = total.mutable_data_ptr<float>();
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // in order: the same sum whatever the threads
    const float* src = partial.data() + chunk * geo.taps() * tap_size;
    for (int64_t i = 0; i < geo.taps() * tap_size; ++i) tp[i] += src[i];
  }
  return total.view({geo.k, geo.k, geo.Co, geo.C}).permute({2, 3, 0, 1}).contiguous();
}

}  // namespace cpu
}  // namespace contres
