// y[M,N] = x[M,K] W^T (+ bias) on AVX-512 CPUs, built for the small M of speculative verification
// (1 to a few dozen rows): each weight is streamed from memory once per call. Two element types:
// float32 weights and inputs, and bfloat16 weights and inputs (AVX512-BF16's dot product of pairs),
// both accumulated in float32.
//
// Layout: W is packed once into panels of 48 output features; panel p is K steps of 48 elements,
// packed[(p*K + k)*48 + j] = W[p*48 + j][k] (zeros past N). A bfloat16 element is a pair of
// consecutive k (the k axis halved, a zero past an odd K), so each step reads 192 bytes in both.
// A tile of up to 8 rows x 48 features keeps 24 accumulators in registers: per step it loads 3
// weight vectors and broadcasts 8 inputs into 24 FMAs (or dot products), so the kernel is
// memory-bound up to M = 8 and near the core's peak past it. Weights are prefetched a few KiB
// ahead of the loads. For M > 8 the K loop is cut into chunks so that every row block of a panel
// reuses the chunk from L1 (the partial sums wait in y, exactly: they are float32).
// Panels are shared among ATen's threads (at::parallel_for, the pool torch.set_num_threads sets).
//
// Batch invariance: output (m, n) is one accumulator fed k = 0, 1, ... in order by the same
// instructions whatever M is, whichever tile holds row m and whichever thread takes the panel, so
// a row's result is bit for bit the same in a 1-row call as in a 40-row one.
//
// The file is compiled with -mavx512bf16; only the ouro_*_bf16 entry points use those
// instructions, and callers check the CPU offers them (kvcache/cpu_gemm.py).
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <stdint.h>
#include <vector>

namespace {

constexpr int64_t kPanel = 48;          // output features per panel: 3 AVX-512 vectors
constexpr int64_t kRowBlock = 8;        // input rows per register tile
constexpr int64_t kChunk = 128;         // k per chunk when several row blocks share a panel
constexpr int64_t kPrefetchBytes = 4096;

struct F32 {  // one k per step
  using Elem = float;
  static __m512 load(const float* w) { return _mm512_loadu_ps(w); }
  static __m512 step(__m512 acc, __m512 w, float x) { return _mm512_fmadd_ps(w, _mm512_set1_ps(x), acc); }
};

struct BF16 {  // a pair of k per step: acc += w[2i] x[0] + w[2i+1] x[1] per lane, in float32
  using Elem = uint32_t;
  static __m512 load(const uint32_t* w) { return _mm512_castsi512_ps(_mm512_loadu_si512(w)); }
  static __m512 step(__m512 acc, __m512 w, uint32_t x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_set1_epi32((int)x));
  }
};

template <class T, int MB>
void tile(const typename T::Elem* xt, int64_t M, int64_t m0, const typename T::Elem* panel, int64_t k0, int64_t k1, float* y,
          uint16_t* yb, int64_t N, int64_t n0, const float* bias, bool first, bool last, const char* ahead, int64_t ahead_step,
          int ahead_lines, bool to_l2) {
  __mmask16 mask[3];
  for (int j = 0; j < 3; ++j) {
    int64_t cols = N - n0 - 16 * j;
    mask[j] = cols >= 16 ? (__mmask16)0xFFFF : cols <= 0 ? (__mmask16)0 : (__mmask16)((1u << cols) - 1);
  }
  __m512 acc[MB][3];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 3; ++j)
      acc[i][j] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[j], y + (m0 + i) * N + n0 + 16 * j);
  const typename T::Elem* xk = xt + k0 * M + m0;
  const typename T::Elem* w = panel + k0 * kPanel;
  for (int64_t k = k0; k < k1; ++k, xk += M, w += kPanel) {
    if (to_l2)  // the next chunk, into L2: in L1 it would evict the chunk being reused
      for (int line = 0; line < ahead_lines; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T1);
    else
      for (int line = 0; line < ahead_lines; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    ahead += ahead_step;
    __m512 w0 = T::load(w), w1 = T::load(w + 16), w2 = T::load(w + 32);
    for (int i = 0; i < MB; ++i) {
      acc[i][0] = T::step(acc[i][0], w0, xk[i]);
      acc[i][1] = T::step(acc[i][1], w1, xk[i]);
      acc[i][2] = T::step(acc[i][2], w2, xk[i]);
    }
  }
  for (int j = 0; j < 3 && mask[j]; ++j) {
    __m512 b = (last && bias) ? _mm512_maskz_loadu_ps(mask[j], bias + n0 + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < MB; ++i) {
      __m512 sum = _mm512_add_ps(acc[i][j], b);
      if (last && yb)  // rounded to nearest even, as torch's .to(torch.bfloat16)
        _mm256_mask_storeu_epi16(yb + (m0 + i) * N + n0 + 16 * j, mask[j], (__m256i)_mm512_cvtneps_pbh(sum));
      else
        _mm512_mask_storeu_ps(y + (m0 + i) * N + n0 + 16 * j, mask[j], sum);
    }
  }
}

template <class T>
struct Tiles {
  using Fn = void (*)(const typename T::Elem*, int64_t, int64_t, const typename T::Elem*, int64_t, int64_t, float*,
                      uint16_t*, int64_t, int64_t, const float*, bool, bool, const char*, int64_t, int, bool);
  static constexpr Fn by_rows[kRowBlock + 1] = {nullptr,       tile<T, 1>, tile<T, 2>, tile<T, 3>, tile<T, 4>,
                                                tile<T, 5>, tile<T, 6>, tile<T, 7>, tile<T, 8>};
};

// K here counts steps: k for float32, pairs of k for bfloat16.
template <class T>
void panels(const typename T::Elem* xt, int64_t M, int64_t K, const typename T::Elem* packed, int64_t N,
            const float* bias, float* y, uint16_t* yb, int64_t p_begin, int64_t p_end) {
  // One row block streams the weights with prefetches kPrefetchBytes ahead of its loads. With
  // several, the blocks share the prefetching of the next chunk (3 / blocks lines per k), so that
  // memory keeps streaming while the later blocks compute from L1. With two blocks that prefetch
  // goes to L2: the next chunk in L1 beside the one the second block reuses evicts it (Zen 4 EPYC,
  // 32 KiB L1d, 1 thread, 1536 x 576 float32 weights from memory: 12 / 16 rows 0.35 / 0.39 ms
  // with L1, 0.27 / 0.33 with L2; 24 to 128 rows and a single block measured no faster with L2).
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  const int64_t chunk = blocks == 1 ? K : kChunk;
  const int64_t step = kPanel * sizeof(typename T::Elem) / blocks;
  const int lines = blocks == 1 ? 3 : 2;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const typename T::Elem* panel = packed + p * K * kPanel;
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
      int64_t k1 = k0 + chunk < K ? k0 + chunk : K;
      const char* next = reinterpret_cast<const char*>(panel + k0 * kPanel) +
                         (blocks == 1 ? kPrefetchBytes : chunk * kPanel * sizeof(typename T::Elem));
      for (int64_t m0 = 0, b = 0; m0 < M; m0 += kRowBlock, ++b) {
        int64_t rows = M - m0 < kRowBlock ? M - m0 : kRowBlock;
        Tiles<T>::by_rows[rows](xt, M, m0, panel, k0, k1, y, yb, N, p * kPanel, bias, k0 == 0, k1 == K, next + b * (k1 - k0) * step,
                     step, lines, blocks == 2);
      }
    }
  }
}


// xt[k * M + m] = x[m][k], except one row, which is its own transpose.
template <class E>
const E* transpose(const E* x, int64_t M, int64_t K, std::vector<E>& scratch) {
  if (M == 1) return x;
  scratch.resize(M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) scratch[k * M + m] = x[m * K + k];
  return scratch.data();
}

template <class T>
void linear(const typename T::Elem* xt, int64_t M, int64_t K, const typename T::Elem* packed, int64_t N,
            const float* bias, float* y, uint16_t* yb) {
  int64_t count = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, count, 1,
                   [&](int64_t begin, int64_t end) { panels<T>(xt, M, K, packed, N, bias, y, yb, begin, end); });
}

// packed must hold ceil(N / 48) * steps * 48 elements; element (n, step) comes from get(n, step).
template <class E, class Get>
void pack(int64_t N, int64_t steps, E* packed, Get get) {
  int64_t count = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t k = 0; k < steps; ++k)
        for (int64_t j = 0; j < kPanel; ++j) {
          int64_t n = p * kPanel + j;
          packed[(p * steps + k) * kPanel + j] = n < N ? get(n, k) : E(0);
        }
  });
}

}  // namespace

extern "C" {

int64_t ouro_panel_width() { return kPanel; }

void ouro_pack(const float* W, int64_t N, int64_t K, float* packed) {
  pack(N, K, packed, [&](int64_t n, int64_t k) { return W[n * K + k]; });
}

// x: M x K row-major, y: M x N row-major, bias: N floats or null.
void ouro_linear(const float* x, int64_t M, int64_t K, const float* packed, int64_t N, const float* bias, float* y) {
  if (M <= 0 || N <= 0) return;
  thread_local std::vector<float> scratch;
  linear<F32>(transpose(x, M, K, scratch), M, K, packed, N, bias, y, nullptr);
}

// W: N x K bfloat16 bits; packed holds ceil(N / 48) * ceil(K / 2) * 48 pairs.
void ouro_pack_bf16(const uint16_t* W, int64_t N, int64_t K, uint32_t* packed) {
  pack(N, (K + 1) / 2, packed, [&](int64_t n, int64_t k2) {
    uint32_t low = W[n * K + 2 * k2], high = 2 * k2 + 1 < K ? W[n * K + 2 * k2 + 1] : 0;
    return low | (high << 16);
  });
}

// x: M x K bfloat16 bits row-major; y: M x N bfloat16 bits (float32 sums rounded once); bias: N
// floats or null.
void ouro_linear_bf16(const uint16_t* x, int64_t M, int64_t K, const uint32_t* packed, int64_t N, const float* bias,
                      uint16_t* y) {
  if (M <= 0 || N <= 0) return;
  const int64_t steps = (K + 1) / 2;
  thread_local std::vector<uint32_t> pairs, scratch;
  thread_local std::vector<float> sums;  // partial sums of several row blocks (M > 8)
  if (M > kRowBlock) sums.resize(M * N);
  const uint32_t* rows = reinterpret_cast<const uint32_t*>(x);
  if (K % 2) {  // pad each row to whole pairs
    pairs.assign(M * steps, 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) pairs[m * steps + k / 2] |= uint32_t(x[m * K + k]) << (16 * (k % 2));
    rows = pairs.data();
  }
  linear<BF16>(transpose(rows, M, steps, scratch), M, steps, packed, N, bias, sums.data(), y);
}

}  // extern "C"
