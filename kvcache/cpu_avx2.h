// What the AVX2 kernels (cpu_*_avx2.cpp) share: 8 float32 lanes in a __m256, a bfloat16 widened
// into one (its bits are a float32's top half) and rounded back to nearest even, as torch's
// .to(torch.bfloat16) rounds (a NaN stays a quiet NaN).
#pragma once
#include <immintrin.h>
#include <stdint.h>

namespace ouro_avx2 {

inline __m256 widen(__m128i halves) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16)); }
inline __m256 load_bf16(const uint16_t* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

inline float scalar(float x) { return x; }
inline float scalar(uint16_t x) {
  uint32_t bits = uint32_t(x) << 16;
  float out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

// The 8 lanes' bfloat16 bits, each in the low half of a 32-bit lane.
inline __m256i round_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd)), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

// v rounded to bfloat16 and widened back: the float32 value a bfloat16 tensor would hold.
inline __m256 round_bf16(__m256 v) { return _mm256_castsi256_ps(_mm256_slli_epi32(round_bits(v), 16)); }

// The first `count` (<= 8) lanes of v, to float32 or bfloat16 memory.
inline void store(float* out, __m256 v, int count) {
  if (count >= 8) {
    _mm256_storeu_ps(out, v);
    return;
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  for (int i = 0; i < count; ++i) out[i] = lanes[i];
}
inline void store(uint16_t* out, __m256 v, int count) {
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), round_bits(v));
  for (int i = 0; i < count && i < 8; ++i) out[i] = uint16_t(lanes[i]);
}

// The first `count` (<= 8) elements at p, zeros past them.
inline __m256 load(const float* p, int count) {
  if (count >= 8) return _mm256_loadu_ps(p);
  alignas(32) float lanes[8] = {};
  for (int i = 0; i < count; ++i) lanes[i] = p[i];
  return _mm256_load_ps(lanes);
}
inline __m256 load(const uint16_t* p, int count) {
  if (count >= 8) return load_bf16(p);
  alignas(16) uint16_t lanes[8] = {};
  for (int i = 0; i < count; ++i) lanes[i] = p[i];
  return load_bf16(lanes);
}

}  // namespace ouro_avx2
