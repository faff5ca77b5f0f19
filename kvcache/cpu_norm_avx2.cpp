// RMSNorm of bfloat16 rows on AVX2 CPUs without AVX-512: cpu_norm.cpp's computation in 8-lane
// vectors, one call per layer, a row's result independent of the other rows in the call.
//
// Per row, in float32: ss = sum x_i^2 (8-lane FMAs over the row in order, then a fixed lane
// reduction), s = 1 / sqrt(ss / D + eps), h_i = x_i * s; then one of HF's three ways to apply the
// weight w, each rounding to bfloat16 where HF's rounds:
//   0 (Llama, Qwen, Mistral, Phi-3): out = w * round(h)
//   1 (OLMo 2):                      out = round(w * h)
//   2 (Gemma):                       out = round(h * (1 + w))
#include <ATen/Parallel.h>
#include <math.h>
#include <stdint.h>

#include "cpu_avx2.h"

namespace {

using namespace ouro_avx2;

void rows(const uint16_t* x, int64_t begin, int64_t end, int64_t D, const uint16_t* w, float eps, int kind,
          uint16_t* out) {
  for (int64_t r = begin; r < end; ++r) {
    const uint16_t* row = x + r * D;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < D; i += 8) {
      const __m256 v = load(row + i, int(D - i < 8 ? D - i : 8));
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int width = 4; width >= 1; width /= 2)  // a fixed pairwise tree
      for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
    const __m256 scale = _mm256_set1_ps(1.0f / sqrtf(lanes[0] / float(D) + eps));
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < D; i += 8) {
      const int count = int(D - i < 8 ? D - i : 8);
      const __m256 h = _mm256_mul_ps(load(row + i, count), scale);
      const __m256 weight = load(w + i, count);
      const __m256 y = kind == 0 ? _mm256_mul_ps(weight, round_bf16(h))
                       : kind == 1 ? _mm256_mul_ps(weight, h)
                                   : _mm256_mul_ps(h, _mm256_add_ps(one, weight));
      store(out + r * D + i, y, count);
    }
  }
}

}  // namespace

extern "C" {

// x and out: R x D row-major bfloat16 bits; w: D bfloat16 bits; kind as above.
void ouro_rms_norm_bf16(const uint16_t* x, int64_t R, int64_t D, const uint16_t* w, float eps, int kind, uint16_t* out) {
  if (R <= 0 || D <= 0) return;
  const int64_t grain = R * D >= 65536 ? 1 : R;  // a few rows: one thread, no fork
  at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) { rows(x, begin, end, D, w, eps, kind, out); });
}

}  // extern "C"
