// Attention over a KV cache on AVX-512 CPUs whose every query's result is independent of the
// other queries, rows and padding in the call: out[b, q, h] depends only on that query, the keys
// its mask allows and their values, bit for bit. So a token verified in a 16-token tree pass gets
// the numbers a 1-token pass gives it (kvcache/cpu_attention.py).
//
// Per query (one work item, one thread, fixed order): s_j = scale * q.k_j (16-lane FMAs over the
// head dimension, then one fixed lane reduction, sums16, for 16 keys at once), optionally
// soft-capped, plus the mask, for the keys the mask allows (a mask value below -1e30 drops the
// key: its score becomes -inf and its value is never read, so garbage in a padded column cannot
// leak in); m = max s_j; p_j = exp(s_j - m) (exp16, our own); out = sum_j p_j v_j / sum_j p_j,
// summed in key order, all in float32.
// A query that may see no key gets zeros.
//
// Inputs are float32 or bfloat16 (E): q (B, H, Q, D), k, v (B, Hkv, S, D), each with strides in
// elements (the last dimension contiguous), or k and v a KV slot pool whose row rows[b] holds
// batch row b's keys (read in place: no gather); the additive mask (B, Q, S) with strides, or null for
// causal: query i sees keys j <= S - Q + i. Output (B, Q, H, D) contiguous: float32, or for
// bfloat16 inputs bfloat16 (each value rounded once, as torch's .to(torch.bfloat16)).
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <vector>

namespace {

constexpr int64_t kMaxVectors = 16;  // head dim up to 256
constexpr float kSkip = -1e30f;

inline __m512 load(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load(const uint16_t* p, __mmask16 mask) {
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline float scalar(float x) { return x; }
inline float scalar(uint16_t x) {
  uint32_t bits = uint32_t(x) << 16;
  float out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

struct Strides {
  int64_t batch, head, seq;
};

// exp(x) for 16 lanes: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial
// (Horner), times 2^n; -inf and anything below -87 give 0. A fixed sequence of operations, so the
// same x always gives the same bits.
inline __m512 exp16(__m512 x) {
  const __m512 low = _mm512_set1_ps(-87.f);
  __mmask16 tiny = _mm512_cmp_ps_mask(x, low, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, low), _mm512_set1_ps(88.f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 poly = _mm512_set1_ps(1.f / 720);
  const float coefficients[] = {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f};
  for (float c : coefficients) poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
  return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(poly, n));
}

// The 16 lane sums of a[0..15] as one vector (lane i: the sum of a[i]'s lanes), by one fixed tree
// of unpacks and adds in which each output lane adds only its own vector's lanes.
inline __m512 sums16(const __m512* a) {
  __m512 t[8], v[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
    v[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

struct Query {  // one query of a block: its vector, mask row and visible end, output, scores
  const void* q;
  const void* mask;
  int64_t visible_end;
  void* out;  // E: float32 for float32 inputs, bfloat16 bits for bfloat16 ones
  float* scores;
};

inline void store(float* out, __mmask16 mask, __m512 x) { _mm512_mask_storeu_ps(out, mask, x); }
inline void store(uint16_t* out, __mmask16 mask, __m512 x) {
  _mm256_mask_storeu_epi16(out, mask, (__m256i)_mm512_cvtneps_pbh(x));
}

// QB queries that read the same keys and values (one kv head of one row): each key and value is
// loaded once for all of them, and each query's numbers are computed exactly as alone.
// V: vectors of 16 lanes that hold the head dim (a power of two, masked past D).
template <class E, int QB, int V>
void query_block(const Query* block, const E* k, const E* v, Strides kv, int64_t mask_seq, int64_t S, int64_t D,
                 float scale, float softcap) {
  constexpr int64_t vectors = V;
  __mmask16 lanes[kMaxVectors];
  for (int64_t c = 0; c < vectors; ++c) {
    int64_t left = D - 16 * c;
    lanes[c] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
  }
  const int64_t padded = (S + 15) / 16 * 16;
  float best[QB];
  __m512 query[QB][V];
  for (int b = 0; b < QB; ++b) {
    best[b] = -INFINITY;
    for (int64_t c = 0; c < vectors; ++c) query[b][c] = load((const E*)block[b].q + 16 * c, lanes[c]);
  }
  const int64_t key_lines = (D * int64_t(sizeof(E)) + 63) / 64;
  for (int64_t j0 = 0; j0 < S; j0 += 16) {  // scores, 16 keys at a time; a skipped key's is -inf
    const int64_t n = S - j0 < 16 ? S - j0 : 16;
    for (int64_t jj = 16; jj < 32 && j0 + jj < S; ++jj)  // the next block's keys, while this one computes
      for (int64_t line = 0; line < key_lines; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(k + (j0 + jj) * kv.seq) + 64 * line, _MM_HINT_T0);
    alignas(64) float keys[16][16 * V];  // this block's keys in float32, zeros past S
    for (int64_t jj = 0; jj < 16; ++jj)
      for (int64_t c = 0; c < vectors; ++c)
        _mm512_store_ps(&keys[jj][16 * c], jj < n ? load(k + (j0 + jj) * kv.seq + 16 * c, lanes[c]) : _mm512_setzero_ps());
    for (int b = 0; b < QB; ++b) {
      const E* mask = (const E*)block[b].mask;
      alignas(64) float bias[16] = {};
      __mmask16 seen = 0;
      for (int64_t jj = 0; jj < n; ++jj) {
        int64_t j = j0 + jj;
        bias[jj] = mask ? scalar(mask[j * mask_seq]) : (j < block[b].visible_end ? 0.f : -INFINITY);
        if (bias[jj] > kSkip) seen |= (__mmask16)(1u << jj);
      }
      float* scores = block[b].scores + j0;
      if (!seen) {
        _mm512_storeu_ps(scores, _mm512_set1_ps(-INFINITY));
        continue;
      }
      __m512 dots[16];
      for (int64_t jj = 0; jj < 16; ++jj) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < vectors; ++c) dot = _mm512_fmadd_ps(query[b][c], _mm512_load_ps(&keys[jj][16 * c]), dot);
        dots[jj] = dot;
      }
      __m512 score = _mm512_mul_ps(sums16(dots), _mm512_set1_ps(scale));
      if (softcap > 0.f) {
        alignas(64) float capped[16];
        _mm512_store_ps(capped, score);
        for (float& x : capped) x = tanhf(x / softcap) * softcap;
        score = _mm512_load_ps(capped);
      }
      score = _mm512_mask_blend_ps(seen, _mm512_set1_ps(-INFINITY), _mm512_add_ps(score, _mm512_load_ps(bias)));
      _mm512_storeu_ps(scores, score);
      float top = _mm512_reduce_max_ps(score);
      best[b] = top > best[b] ? top : best[b];
    }
  }
  float total[QB];
  for (int b = 0; b < QB; ++b) {  // weights exp(s_j - max), in place; a query that sees no key gets zeros
    float* scores = block[b].scores;
    for (int64_t j = S; j < padded; ++j) scores[j] = -INFINITY;
    const __m512 shift = _mm512_set1_ps(best[b] == -INFINITY ? 0.f : best[b]);
    for (int64_t j = 0; j < padded; j += 16)
      _mm512_storeu_ps(scores + j, exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + j), shift)));
    total[b] = 0.f;
  }
  __m512 acc[QB][kMaxVectors];
  for (int b = 0; b < QB; ++b)
    for (int64_t c = 0; c < vectors; ++c) acc[b][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < S; ++j) {  // weighted values, in key order
    if (j + 8 < S)
      for (int64_t line = 0; line < key_lines; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(v + (j + 8) * kv.seq) + 64 * line, _MM_HINT_T0);
    __m512 value[kMaxVectors];
    for (int64_t c = 0; c < vectors; ++c) value[c] = load(v + j * kv.seq + 16 * c, lanes[c]);
    for (int b = 0; b < QB; ++b) {
      float p = block[b].scores[j];
      if (p == 0.f) continue;  // skipped (or negligible: adding 0 v_j changes nothing)
      total[b] += p;
      __m512 weight = _mm512_set1_ps(p);
      for (int64_t c = 0; c < vectors; ++c) acc[b][c] = _mm512_fmadd_ps(weight, value[c], acc[b][c]);
    }
  }
  for (int b = 0; b < QB; ++b) {
    __m512 inverse = _mm512_set1_ps(total[b] > 0.f ? 1.f / total[b] : 0.f);
    for (int64_t c = 0; c < vectors; ++c)
      store((E*)block[b].out + 16 * c, lanes[c], _mm512_mul_ps(acc[b][c], inverse));
  }
}

constexpr int kQueryBlock = 4;

template <class E>
using BlockFn = void (*)(const Query*, const E*, const E*, Strides, int64_t, int64_t, int64_t, float, float);
template <class E, int QB>
constexpr BlockFn<E> kByVectors[5] = {query_block<E, QB, 1>, query_block<E, QB, 2>, query_block<E, QB, 4>,
                                      query_block<E, QB, 8>, query_block<E, QB, 16>};
template <class E>
constexpr const BlockFn<E>* kBlocks[kQueryBlock] = {kByVectors<E, 1>, kByVectors<E, 2>, kByVectors<E, 3>,
                                                    kByVectors<E, 4>};

inline int vector_index(int64_t D) {  // 1, 2, 4, 8, 16 vectors
  int index = 0;
  while ((16 << index) < D) ++index;
  return index;
}

template <class E>
void attention(const E* q, Strides qs, int64_t B, int64_t H, int64_t Q, int64_t D, const E* k, const E* v,
               const int64_t* rows, int64_t Hkv, int64_t S, Strides kv, const E* mask, Strides mask_strides, float scale,
               float softcap, E* out) {
  // work item: (row b, kv head g, block of the group's queries); query n of a group is head
  // g * groups + n / Q at position n % Q
  const int64_t groups = H / Hkv, per_group = groups * Q, blocks = (per_group + kQueryBlock - 1) / kQueryBlock;
  const int64_t padded = (S + 15) / 16 * 16;
  at::parallel_for(0, B * Hkv * blocks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    scores.resize(kQueryBlock * padded);
    for (int64_t item = begin; item < end; ++item) {
      int64_t b = item / (Hkv * blocks), g = item / blocks % Hkv, first = item % blocks * kQueryBlock;
      int64_t count = per_group - first < kQueryBlock ? per_group - first : kQueryBlock;
      Query block[kQueryBlock];
      for (int64_t n = 0; n < count; ++n) {
        int64_t h = g * groups + (first + n) / Q, i = (first + n) % Q;
        block[n] = {q + b * qs.batch + h * qs.head + i * qs.seq,
                    mask ? mask + b * mask_strides.batch + i * mask_strides.head : nullptr, S - Q + i + 1,
                    out + ((b * Q + i) * H + h) * D, scores.data() + n * padded};
      }
      const int64_t row = rows ? rows[b] : b;
      const E* keys = k + row * kv.batch + g * kv.head;
      const E* values = v + row * kv.batch + g * kv.head;
      kBlocks<E>[count - 1][vector_index(D)](block, keys, values, kv, mask_strides.seq, S, D, scale, softcap);
    }
  });
}

}  // namespace

extern "C" {

int64_t ouro_attention_max_head_dim() { return 16 * kMaxVectors; }

// q_strides, kv_strides and mask_strides: {batch, head (mask: query), seq}, in elements; rows:
// B row indices into k and v, or null (row b). bf16: every input and the output are bfloat16
// bits, else float32.
void ouro_attention(int bf16, const void* q, const int64_t* q_strides, int64_t B, int64_t H, int64_t Q, int64_t D,
                    const void* k, const void* v, const int64_t* rows, int64_t Hkv, int64_t S,
                    const int64_t* kv_strides, const void* mask, const int64_t* mask_strides, float scale,
                    float softcap, void* out) {
  if (B <= 0 || H <= 0 || Q <= 0 || D <= 0 || D > 16 * kMaxVectors || Hkv <= 0 || H % Hkv) return;
  Strides qs{q_strides[0], q_strides[1], q_strides[2]};
  Strides kv{kv_strides[0], kv_strides[1], kv_strides[2]};
  Strides ms = mask ? Strides{mask_strides[0], mask_strides[1], mask_strides[2]} : Strides{0, 0, 0};
  if (bf16)
    attention((const uint16_t*)q, qs, B, H, Q, D, (const uint16_t*)k, (const uint16_t*)v, rows, Hkv, S, kv,
              (const uint16_t*)mask, ms, scale, softcap, (uint16_t*)out);
  else
    attention((const float*)q, qs, B, H, Q, D, (const float*)k, (const float*)v, rows, Hkv, S, kv, (const float*)mask, ms,
              scale, softcap, (float*)out);
}

}  // extern "C"
