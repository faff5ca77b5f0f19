// y[M,N] = x[M,K] W^T (+ bias) for float32 on AVX-512 CPUs, built for the small M of speculative
// verification (1 to a few dozen rows): each weight is streamed from memory once per call.
//
// Layout: W is packed once into panels of 48 output features; panel p is K rows of 48 floats,
// packed[(p*K + k)*48 + j] = W[p*48 + j][k] (zeros past N). A tile of up to 8 rows x 48
// features keeps 24 accumulators in registers: per k it loads 3 weight vectors and broadcasts 8
// inputs into 24 FMAs, so the kernel is memory-bound up to M = 8 and near the core's FMA peak
// past it. Weights are prefetched a few KiB ahead of the loads. For M > 8 the K loop is cut into
// chunks so that every row block of a panel reuses the chunk from L1 (the partial sums wait in y).
// Panels are shared among ATen's threads (at::parallel_for, the pool torch.set_num_threads sets).
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <stdint.h>
#include <vector>

namespace {

constexpr int64_t kPanel = 48;          // output features per panel: 3 AVX-512 vectors
constexpr int64_t kRowBlock = 8;        // input rows per register tile
constexpr int64_t kChunk = 128;         // k per chunk when several row blocks share a panel
constexpr int64_t kPrefetchBytes = 4096;

template <int MB>
void tile(const float* xt, int64_t M, int64_t m0, const float* panel, int64_t k0, int64_t k1, float* y,
          int64_t N, int64_t n0, const float* bias, bool first, bool last, const char* ahead, int64_t ahead_step,
          int ahead_lines) {
  __mmask16 mask[3];
  for (int j = 0; j < 3; ++j) {
    int64_t cols = N - n0 - 16 * j;
    mask[j] = cols >= 16 ? (__mmask16)0xFFFF : cols <= 0 ? (__mmask16)0 : (__mmask16)((1u << cols) - 1);
  }
  __m512 acc[MB][3];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 3; ++j)
      acc[i][j] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[j], y + (m0 + i) * N + n0 + 16 * j);
  const float* xk = xt + k0 * M + m0;
  const float* w = panel + k0 * kPanel;
  for (int64_t k = k0; k < k1; ++k, xk += M, w += kPanel) {
    for (int line = 0; line < ahead_lines; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    ahead += ahead_step;
    __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32);
    for (int i = 0; i < MB; ++i) {
      __m512 xb = _mm512_set1_ps(xk[i]);
      acc[i][0] = _mm512_fmadd_ps(w0, xb, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(w1, xb, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(w2, xb, acc[i][2]);
    }
  }
  for (int j = 0; j < 3 && mask[j]; ++j) {
    __m512 b = (last && bias) ? _mm512_maskz_loadu_ps(mask[j], bias + n0 + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < MB; ++i)
      _mm512_mask_storeu_ps(y + (m0 + i) * N + n0 + 16 * j, mask[j], _mm512_add_ps(acc[i][j], b));
  }
}

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t, int64_t,
                        const float*, bool, bool, const char*, int64_t, int);
const TileFn kTiles[kRowBlock + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>, tile<7>, tile<8>};

void panels(const float* xt, int64_t M, int64_t K, const float* packed, int64_t N, const float* bias, float* y,
            int64_t p_begin, int64_t p_end) {
  // One row block streams the weights with prefetches kPrefetchBytes ahead of its loads. With
  // several, the blocks share the prefetching of the next chunk (3 / blocks lines per k), so that
  // memory keeps streaming while the later blocks compute from L1.
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  const int64_t chunk = blocks == 1 ? K : kChunk;
  const int64_t step = kPanel * sizeof(float) / blocks;
  const int lines = blocks == 1 ? 3 : 2;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const float* panel = packed + p * K * kPanel;
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
      int64_t k1 = k0 + chunk < K ? k0 + chunk : K;
      const char* next = reinterpret_cast<const char*>(panel + k0 * kPanel) +
                         (blocks == 1 ? kPrefetchBytes : chunk * kPanel * sizeof(float));
      for (int64_t m0 = 0, b = 0; m0 < M; m0 += kRowBlock, ++b) {
        int64_t rows = M - m0 < kRowBlock ? M - m0 : kRowBlock;
        kTiles[rows](xt, M, m0, panel, k0, k1, y, N, p * kPanel, bias, k0 == 0, k1 == K, next + b * (k1 - k0) * step,
                     step, lines);
      }
    }
  }
}

}  // namespace

extern "C" {

int64_t ouro_panel_width() { return kPanel; }

// packed must hold ceil(N / 48) * K * 48 floats.
void ouro_pack(const float* W, int64_t N, int64_t K, float* packed) {
  int64_t count = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kPanel; ++j) {
          int64_t n = p * kPanel + j;
          packed[(p * K + k) * kPanel + j] = n < N ? W[n * K + k] : 0.f;
        }
  });
}

// x: M x K row-major, y: M x N row-major, bias: N floats or null.
void ouro_linear(const float* x, int64_t M, int64_t K, const float* packed, int64_t N, const float* bias, float* y) {
  if (M <= 0 || N <= 0) return;
  thread_local std::vector<float> transposed;
  const float* xt = x;
  if (M > 1) {
    transposed.resize(M * K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) transposed[k * M + m] = x[m * K + k];
    xt = transposed.data();
  }
  int64_t count = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) { panels(xt, M, K, packed, N, bias, y, begin, end); });
}

}  // extern "C"
