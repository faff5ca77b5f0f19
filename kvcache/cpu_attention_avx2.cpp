// Attention over a KV cache on AVX2 CPUs without AVX-512, with every query's result independent
// of the other queries, rows and padding in the call: cpu_attention.cpp's computation (read its
// header for the inputs, strides, masks and layout) in 8-lane vectors, with the same entry points.
//
// Per query (one work item, one thread, fixed order): s_j = scale * q.k_j (8-lane FMAs over the
// head dimension, then one fixed lane reduction, sums8, for 8 keys at once), optionally
// soft-capped, plus the mask, for the keys the mask allows (a mask value below -1e30 drops the
// key); m = max s_j; p_j = exp(s_j - m) (exp8, our own); out = sum_j p_j v_j / sum_j p_j, summed
// in key order, all in float32. A query that may see no key gets zeros.
#include <ATen/Parallel.h>
#include <math.h>
#include <stdint.h>
#include <vector>

#include "cpu_avx2.h"

namespace {

using namespace ouro_avx2;

constexpr int64_t kMaxVectors = 32;  // head dim up to 256
constexpr float kSkip = -1e30f;

struct Strides {
  int64_t batch, head, seq;
};

// exp(x) for 8 lanes: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial
// (Horner), times 2^n (built in the exponent bits); -inf and anything below -87 give 0. A fixed
// sequence of operations, so the same x always gives the same bits.
inline __m256 exp8(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.f);
  const __m256 tiny = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.f / 720);
  const float coefficients[] = {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f};
  for (float c : coefficients) poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
  const __m256 power = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(poly, power));
}

// The 8 lane sums of a[0..7] as one vector (lane i: the sum of a[i]'s lanes), by one fixed tree of
// horizontal adds in which each output lane adds only its own vector's lanes.
inline __m256 sums8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

struct Query {  // one query of a block: its vector, mask row and visible end, output, scores
  const void* q;
  const void* mask;
  int64_t visible_end;
  void* out;  // E: float32 for float32 inputs, bfloat16 bits for bfloat16 ones
  float* scores;
};

// QB queries that read the same keys and values (one kv head of one row): each key and value is
// loaded once for all of them, and each query's numbers are computed exactly as alone.
// V: vectors of 8 lanes that hold the head dim (a power of two, zeros past D).
template <class E, int QB, int V>
void query_block(const Query* block, const E* k, const E* v, Strides kv, int64_t mask_seq, int64_t S, int64_t D,
                 float scale, float softcap) {
  int lanes[V];
  for (int c = 0; c < V; ++c) lanes[c] = int(D - 8 * c);
  const int64_t padded = (S + 7) / 8 * 8;
  float best[QB];
  __m256 query[QB][V];
  for (int b = 0; b < QB; ++b) {
    best[b] = -INFINITY;
    for (int c = 0; c < V; ++c) query[b][c] = load((const E*)block[b].q + 8 * c, lanes[c]);
  }
  const int64_t key_lines = (D * int64_t(sizeof(E)) + 63) / 64;
  for (int64_t j0 = 0; j0 < S; j0 += 8) {  // scores, 8 keys at a time; a skipped key's is -inf
    const int64_t n = S - j0 < 8 ? S - j0 : 8;
    for (int64_t jj = 8; jj < 16 && j0 + jj < S; ++jj)  // the next block's keys, while this one computes
      for (int64_t line = 0; line < key_lines; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + jj) * kv.seq) + 64 * line, _MM_HINT_T0);
    alignas(32) float keys[8][8 * V];  // this block's keys in float32, zeros past S
    for (int64_t jj = 0; jj < 8; ++jj)
      for (int c = 0; c < V; ++c)
        _mm256_store_ps(&keys[jj][8 * c], jj < n ? load(k + (j0 + jj) * kv.seq + 8 * c, lanes[c]) : _mm256_setzero_ps());
    for (int b = 0; b < QB; ++b) {
      const E* mask = (const E*)block[b].mask;
      float bias[8] = {};
      bool seen[8] = {}, any = false;
      for (int64_t jj = 0; jj < n; ++jj) {
        const int64_t j = j0 + jj;
        bias[jj] = mask ? scalar(mask[j * mask_seq]) : (j < block[b].visible_end ? 0.f : -INFINITY);
        seen[jj] = bias[jj] > kSkip;
        any = any || seen[jj];
      }
      float* scores = block[b].scores + j0;
      if (!any) {
        for (int jj = 0; jj < 8; ++jj) scores[jj] = -INFINITY;
        continue;
      }
      __m256 dots[8];
      for (int jj = 0; jj < 8; ++jj) {
        __m256 dot = _mm256_setzero_ps();
        for (int c = 0; c < V; ++c) dot = _mm256_fmadd_ps(query[b][c], _mm256_load_ps(&keys[jj][8 * c]), dot);
        dots[jj] = dot;
      }
      alignas(32) float score[8];
      _mm256_store_ps(score, _mm256_mul_ps(sums8(dots), _mm256_set1_ps(scale)));
      for (int jj = 0; jj < 8; ++jj) {
        float s = softcap > 0.f ? tanhf(score[jj] / softcap) * softcap : score[jj];
        s = seen[jj] ? s + bias[jj] : -INFINITY;
        scores[jj] = s;
        best[b] = s > best[b] ? s : best[b];
      }
    }
  }
  float total[QB];
  for (int b = 0; b < QB; ++b) {  // weights exp(s_j - max), in place; a query that sees no key gets zeros
    float* scores = block[b].scores;
    for (int64_t j = S; j < padded; ++j) scores[j] = -INFINITY;
    const __m256 shift = _mm256_set1_ps(best[b] == -INFINITY ? 0.f : best[b]);
    for (int64_t j = 0; j < padded; j += 8)
      _mm256_storeu_ps(scores + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), shift)));
    total[b] = 0.f;
  }
  __m256 acc[QB][V];
  for (int b = 0; b < QB; ++b)
    for (int c = 0; c < V; ++c) acc[b][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < S; ++j) {  // weighted values, in key order
    if (j + 8 < S)
      for (int64_t line = 0; line < key_lines; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(v + (j + 8) * kv.seq) + 64 * line, _MM_HINT_T0);
    __m256 value[V];
    for (int c = 0; c < V; ++c) value[c] = load(v + j * kv.seq + 8 * c, lanes[c]);
    for (int b = 0; b < QB; ++b) {
      const float p = block[b].scores[j];
      if (p == 0.f) continue;  // skipped (or negligible: adding 0 v_j changes nothing)
      total[b] += p;
      const __m256 weight = _mm256_set1_ps(p);
      for (int c = 0; c < V; ++c) acc[b][c] = _mm256_fmadd_ps(weight, value[c], acc[b][c]);
    }
  }
  for (int b = 0; b < QB; ++b) {
    const __m256 inverse = _mm256_set1_ps(total[b] > 0.f ? 1.f / total[b] : 0.f);
    for (int c = 0; c < V; ++c) store((E*)block[b].out + 8 * c, _mm256_mul_ps(acc[b][c], inverse), lanes[c]);
  }
}

constexpr int kQueryBlock = 4;

template <class E>
using BlockFn = void (*)(const Query*, const E*, const E*, Strides, int64_t, int64_t, int64_t, float, float);
template <class E, int QB>
constexpr BlockFn<E> kByVectors[6] = {query_block<E, QB, 1>, query_block<E, QB, 2>, query_block<E, QB, 4>,
                                      query_block<E, QB, 8>, query_block<E, QB, 16>, query_block<E, QB, 32>};
template <class E>
constexpr const BlockFn<E>* kBlocks[kQueryBlock] = {kByVectors<E, 1>, kByVectors<E, 2>, kByVectors<E, 3>,
                                                    kByVectors<E, 4>};

inline int vector_index(int64_t D) {  // 1, 2, 4, 8, 16, 32 vectors
  int index = 0;
  while ((8 << index) < D) ++index;
  return index;
}

template <class E>
void attention(const E* q, Strides qs, int64_t B, int64_t H, int64_t Q, int64_t D, const E* k, const E* v,
               const int64_t* rows, int64_t Hkv, int64_t S, Strides kv, const E* mask, Strides mask_strides, float scale,
               float softcap, E* out) {
  // work item: (row b, kv head g, block of the group's queries); query n of a group is head
  // g * groups + n / Q at position n % Q
  const int64_t groups = H / Hkv, per_group = groups * Q, blocks = (per_group + kQueryBlock - 1) / kQueryBlock;
  const int64_t padded = (S + 7) / 8 * 8;
  at::parallel_for(0, B * Hkv * blocks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    scores.resize(kQueryBlock * padded);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (Hkv * blocks), g = item / blocks % Hkv, first = item % blocks * kQueryBlock;
      const int64_t count = per_group - first < kQueryBlock ? per_group - first : kQueryBlock;
      Query block[kQueryBlock];
      for (int64_t n = 0; n < count; ++n) {
        const int64_t h = g * groups + (first + n) / Q, i = (first + n) % Q;
        block[n] = {q + b * qs.batch + h * qs.head + i * qs.seq,
                    mask ? mask + b * mask_strides.batch + i * mask_strides.head : nullptr, S - Q + i + 1,
                    out + ((b * Q + i) * H + h) * D, scores.data() + n * padded};
      }
      const int64_t row = rows ? rows[b] : b;
      kBlocks<E>[count - 1][vector_index(D)](block, k + row * kv.batch + g * kv.head, v + row * kv.batch + g * kv.head, kv,
                                             mask_strides.seq, S, D, scale, softcap);
    }
  });
}

}  // namespace

extern "C" {

int64_t ouro_attention_max_head_dim() { return 8 * kMaxVectors; }

// As cpu_attention.cpp's: q_strides, kv_strides and mask_strides {batch, head (mask: query), seq}
// in elements; rows: B row indices into k and v, or null (row b); bf16: every input and the output
// are bfloat16 bits, else float32.
void ouro_attention(int bf16, const void* q, const int64_t* q_strides, int64_t B, int64_t H, int64_t Q, int64_t D,
                    const void* k, const void* v, const int64_t* rows, int64_t Hkv, int64_t S,
                    const int64_t* kv_strides, const void* mask, const int64_t* mask_strides, float scale,
                    float softcap, void* out) {
  if (B <= 0 || H <= 0 || Q <= 0 || D <= 0 || D > 8 * kMaxVectors || Hkv <= 0 || H % Hkv) return;
  const Strides qs{q_strides[0], q_strides[1], q_strides[2]};
  const Strides kv{kv_strides[0], kv_strides[1], kv_strides[2]};
  const Strides ms = mask ? Strides{mask_strides[0], mask_strides[1], mask_strides[2]} : Strides{0, 0, 0};
  if (bf16)
    attention((const uint16_t*)q, qs, B, H, Q, D, (const uint16_t*)k, (const uint16_t*)v, rows, Hkv, S, kv,
              (const uint16_t*)mask, ms, scale, softcap, (uint16_t*)out);
  else
    attention((const float*)q, qs, B, H, Q, D, (const float*)k, (const float*)v, rows, Hkv, S, kv, (const float*)mask, ms,
              scale, softcap, (float*)out);
}

}  // extern "C"
