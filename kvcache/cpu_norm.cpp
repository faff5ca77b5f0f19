// RMSNorm of bfloat16 rows on AVX-512 CPUs in one call per layer instead of HF's seven or eight
// tensor ops, with a row's result independent of the other rows in the call (kvcache/norms.py).
//
// Per row, in float32: ss = sum x_i^2 (16-lane FMAs over the row in order, then a fixed lane
// reduction), s = 1 / sqrt(ss / D + eps), h_i = x_i * s; then one of HF's three ways to apply the
// weight w, each rounding to bfloat16 where HF's rounds:
//   0 (Llama, Qwen, Mistral, Phi-3): out = w * round(h)
//   1 (OLMo 2):                      out = round(w * h)
//   2 (Gemma):                       out = round(h * (1 + w))
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

namespace {

inline __m512 load(const uint16_t* p, __mmask16 mask) {
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void store(uint16_t* p, __mmask16 mask, __m512 v) {  // rounded to nearest even, as torch's .to(torch.bfloat16)
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}
inline __m512 round(__m512 v) {
  __m512i wide = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

void rows(const uint16_t* x, int64_t begin, int64_t end, int64_t D, const uint16_t* w, float eps, int kind,
          uint16_t* out) {
  for (int64_t r = begin; r < end; ++r) {
    const uint16_t* row = x + r * D;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i += 16) {
      __mmask16 mask = D - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (D - i)) - 1);
      __m512 v = load(row + i, mask);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, acc);
    for (int width = 8; width >= 1; width /= 2)  // a fixed pairwise tree
      for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
    const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(lanes[0] / float(D) + eps));
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < D; i += 16) {
      __mmask16 mask = D - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (D - i)) - 1);
      __m512 h = _mm512_mul_ps(load(row + i, mask), scale);
      __m512 weight = load(w + i, mask);
      __m512 y = kind == 0 ? _mm512_mul_ps(weight, round(h)) : kind == 1 ? _mm512_mul_ps(weight, h)
                                                                      : _mm512_mul_ps(h, _mm512_add_ps(one, weight));
      store(out + r * D + i, mask, y);
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
