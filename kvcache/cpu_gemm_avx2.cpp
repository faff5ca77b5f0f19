// y[M,N] = x[M,K] W^T (+ bias) on AVX2 CPUs without AVX-512: the plan of cpu_gemm.cpp in 8-lane
// vectors, with the same entry points (kvcache/cpu_gemm.py builds one file set or the other).
// Float32 weights, or bfloat16 weights widened to float32 in registers (a bfloat16 is a float32's
// top half: half the bytes from memory, the same float32 FMAs); the inputs are made a float32
// transpose once per call; every sum is float32.
//
// Layout: W is packed once into panels of 16 output features; panel p is K steps of 16 elements,
// packed[(p*K + k)*16 + j] = W[p*16 + j][k] (zeros past N), float32 or bfloat16 bits. A tile of up
// to 6 rows x 16 features keeps 12 accumulators in registers: per step it loads 2 weight vectors
// and broadcasts 6 inputs into 12 FMAs; M > 6 is shared out evenly among ceil(M / 6) tiles. For M > 6 the K loop is cut into chunks so that every row
// block of a panel reuses the chunk from L1 (the partial sums wait in float32, exactly); the first
// block prefetches the next chunk into L2 meanwhile. Panels are shared among ATen's threads.
//
// Batch invariance: output (m, n) is one accumulator fed k = 0, 1, ... in order by the same
// instructions whatever M is, whichever tile holds row m and whichever thread takes the panel, so
// a row's result is bit for bit the same in a 1-row call as in a 40-row one.
#include <ATen/Parallel.h>
#include <stdint.h>
#include <vector>

#include "cpu_avx2.h"

namespace {

using namespace ouro_avx2;

constexpr int64_t kPanel = 16;  // output features per panel: 2 vectors
constexpr int64_t kRowBlock = 6;
constexpr int64_t kChunk = 256;  // k per chunk when several row blocks share a panel (16 KiB of float32)
constexpr int64_t kPrefetchBytes = 2048;

struct F32 {
  using Elem = float;
  static __m256 load(const float* w) { return _mm256_loadu_ps(w); }
};

struct BF16 {
  using Elem = uint16_t;
  static __m256 load(const uint16_t* w) { return load_bf16(w); }
};

// Row i's two sums: the bias added on the last chunk, then float32 partial sums to y, or on the
// last chunk bfloat16 to yb where given.
inline void finish(__m256 first_half, __m256 second_half, int64_t at, int cols, float* y, uint16_t* yb, const float* bias,
                   bool last) {
  const __m256 halves[2] = {first_half, second_half};
  for (int j = 0; j < 2; ++j) {
    if (cols <= 8 * j) break;
    const __m256 sum = _mm256_add_ps(halves[j], (last && bias) ? load(bias + 8 * j, cols - 8 * j) : _mm256_setzero_ps());
    if (last && yb)
      store(yb + at + 8 * j, sum, cols - 8 * j);
    else
      store(y + at + 8 * j, sum, cols - 8 * j);
  }
}

// The accumulators are named variables, one pair per row (OURO_ROWS): GCC 12 keeps an array of
// vectors on the stack and stores it back at every k, which ran the tile at a third of its speed.
#define OURO_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

template <class T, int MB>
void tile(const float* xt, int64_t M, int64_t m0, const typename T::Elem* panel, int64_t k0, int64_t k1, float* y,
          uint16_t* yb, int64_t N, int64_t n0, const float* bias, bool first, bool last, const char* ahead, int64_t ahead_step,
          bool to_l2) {
  static_assert(MB >= 1 && MB <= kRowBlock, "a tile holds 1 to 6 rows");
  const int cols = N - n0 >= kPanel ? int(kPanel) : int(N - n0);
#define OURO_START(i)                                                              \
  __m256 acc##i##a = _mm256_setzero_ps(), acc##i##b = _mm256_setzero_ps();         \
  if (MB > i && !first) {                                                          \
    acc##i##a = load(y + (m0 + i) * N + n0, cols);                                 \
    acc##i##b = load(y + (m0 + i) * N + n0 + 8, cols - 8);                         \
  }
  OURO_ROWS(OURO_START)
  const float* xk = xt + k0 * M + m0;
  const typename T::Elem* w = panel + k0 * kPanel;
  for (int64_t k = k0; k < k1; ++k, xk += M, w += kPanel) {
    if (ahead) {
      if (to_l2)  // the next chunk, into L2: in L1 it would evict the chunk being reused
        _mm_prefetch(ahead, _MM_HINT_T1);
      else
        _mm_prefetch(ahead, _MM_HINT_T0);
      ahead += ahead_step;
    }
    const __m256 w0 = T::load(w), w1 = T::load(w + 8);
#define OURO_STEP(i)                                        \
  if constexpr (MB > i) {                                   \
    const __m256 x = _mm256_broadcast_ss(xk + i);           \
    acc##i##a = _mm256_fmadd_ps(w0, x, acc##i##a);          \
    acc##i##b = _mm256_fmadd_ps(w1, x, acc##i##b);          \
  }
    OURO_ROWS(OURO_STEP)
  }
#define OURO_FINISH(i) \
  if constexpr (MB > i) finish(acc##i##a, acc##i##b, (m0 + i) * N + n0, cols, y, yb, bias ? bias + n0 : nullptr, last);
  OURO_ROWS(OURO_FINISH)
#undef OURO_START
#undef OURO_STEP
#undef OURO_FINISH
}

template <class T>
struct Tiles {
  using Fn = void (*)(const float*, int64_t, int64_t, const typename T::Elem*, int64_t, int64_t, float*, uint16_t*, int64_t,
                      int64_t, const float*, bool, bool, const char*, int64_t, bool);
  static constexpr Fn by_rows[kRowBlock + 1] = {nullptr, tile<T, 1>, tile<T, 2>, tile<T, 3>, tile<T, 4>, tile<T, 5>, tile<T, 6>};
};

template <class T>
void panels(const float* xt, int64_t M, int64_t K, const typename T::Elem* packed, int64_t N, const float* bias, float* y,
            uint16_t* yb, int64_t p_begin, int64_t p_end) {
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  const int64_t per_block = (M + blocks - 1) / blocks;  // rows shared out evenly: a 2-row tile would wait on its FMAs' latency
  const int64_t chunk = blocks == 1 ? K : kChunk;
  const int64_t step = kPanel * sizeof(typename T::Elem);  // bytes per k
  for (int64_t p = p_begin; p < p_end; ++p) {
    const typename T::Elem* panel = packed + p * K * kPanel;
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
      const int64_t k1 = k0 + chunk < K ? k0 + chunk : K;
      const char* here = reinterpret_cast<const char*>(panel + k0 * kPanel);
      const char* ahead = blocks == 1 ? here + kPrefetchBytes : here + (k1 - k0) * step;  // the next chunk
      for (int64_t m0 = 0; m0 < M; m0 += per_block) {
        const int64_t rows = M - m0 < per_block ? M - m0 : per_block;
        Tiles<T>::by_rows[rows](xt, M, m0, panel, k0, k1, y, yb, N, p * kPanel, bias, k0 == 0, k1 == K,
                                m0 == 0 ? ahead : nullptr, step, blocks > 1);
      }
    }
  }
}

template <class T>
void linear(const float* xt, int64_t M, int64_t K, const typename T::Elem* packed, int64_t N, const float* bias, float* y,
            uint16_t* yb) {
  const int64_t count = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) { panels<T>(xt, M, K, packed, N, bias, y, yb, begin, end); });
}

// xt[k * M + m] = x[m][k] as float32; one float32 row is its own transpose.
template <class E>
const float* transpose(const E* x, int64_t M, int64_t K, std::vector<float>& scratch) {
  if constexpr (sizeof(E) == sizeof(float))
    if (M == 1) return reinterpret_cast<const float*>(x);
  scratch.resize(M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) scratch[k * M + m] = scalar(x[m * K + k]);
  return scratch.data();
}

// packed must hold ceil(N / 16) * K * 16 elements.
template <class E>
void pack(const E* W, int64_t N, int64_t K, E* packed) {
  const int64_t count = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kPanel; ++j) {
          const int64_t n = p * kPanel + j;
          packed[(p * K + k) * kPanel + j] = n < N ? W[n * K + k] : E(0);
        }
  });
}

}  // namespace

extern "C" {

int64_t ouro_panel_width() { return kPanel; }

void ouro_pack(const float* W, int64_t N, int64_t K, float* packed) { pack(W, N, K, packed); }

// x: M x K row-major, y: M x N row-major, bias: N floats or null.
void ouro_linear(const float* x, int64_t M, int64_t K, const float* packed, int64_t N, const float* bias, float* y) {
  if (M <= 0 || N <= 0) return;
  thread_local std::vector<float> scratch;
  linear<F32>(transpose(x, M, K, scratch), M, K, packed, N, bias, y, nullptr);
}

// W: N x K bfloat16 bits; packed (sized by the caller for ceil(N / 16) * 16 * ceil(K / 2) pairs)
// receives ceil(N / 16) * K * 16 bfloat16 elements.
void ouro_pack_bf16(const uint16_t* W, int64_t N, int64_t K, uint32_t* packed) {
  pack(W, N, K, reinterpret_cast<uint16_t*>(packed));
}

// x: M x K bfloat16 bits row-major; y: M x N bfloat16 bits (float32 sums rounded once); bias: N
// floats or null.
void ouro_linear_bf16(const uint16_t* x, int64_t M, int64_t K, const uint32_t* packed, int64_t N, const float* bias,
                      uint16_t* y) {
  if (M <= 0 || N <= 0) return;
  thread_local std::vector<float> scratch, sums;  // sums: the partial sums of several row blocks (M > 6)
  if (M > kRowBlock) sums.resize(M * N);
  linear<BF16>(transpose(x, M, K, scratch), M, K, reinterpret_cast<const uint16_t*>(packed), N, bias, sums.data(), y);
}

}  // extern "C"
