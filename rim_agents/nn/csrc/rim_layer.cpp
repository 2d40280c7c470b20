// One RIM layer over a whole sequence, forward and hand-written backward, for CPU.
//
// The Python side (rim_agents/nn/native.py) computes the input keys and the per-call
// weight layouts with autograd, as the PyTorch path does, and hands this file the time
// loop: per step, the recurrent matmul, the null-input scores and top-k selection, the
// input-to-gate terms and LSTM/GRU update of the active units, communication attention
// and the read of the active units, and the episode resets.
// The backward runs the same loop in reverse and returns the gradient of every input;
// weight gradients are accumulated step by step, so no sequence-long gradient buffers.
//
// Float matmuls run this file's SIMD kernel where the build has AVX-512F or AVX2 with FMA;
// the others call the BLAS that libtorch_cpu exports (MKL's sgemm_/dgemm_ on x86 wheels), declared
// weak: where a build of torch has none, `has_blas()` is false and the Python side does
// not pick this backend. Everything else is plain loops over contiguous memory, so one
// step costs a handful of matmuls and no allocations.
//
// Symbols: L steps, N batch, D input features, K units, H unit size,
// G gate width (4H LSTM, 3H GRU), Q query width (or D: keys folded into the queries),
// A comm heads, E comm key size, V comm value size,
// W = A*(2E+V) qkv width, R = A*V read width, O = H (linear read) or 2H (gated read).

#include <torch/extension.h>

#include <pthread.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // the C interface (by value)
}

namespace {

using at::Tensor;

template <typename T>
void blas_gemm(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta,
               T* c, int ldc);

template <>
void blas_gemm<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                      int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <>
void blas_gemm<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
                       const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Small float matmuls in the widest vectors the build has (AVX-512F, else AVX2 with FMA),
// for the per-step shapes of the loop (a few to a few hundred rows and columns). MKL's
// sgemm runs its AVX2 code on AMD CPUs and copies its operands into packed blocks at every
// call; at the op's shapes this kernel, which reads them in place, measured 2.1-3.3x its
// speed with AVX-512 (docs/benchmarks.md). One template serves both widths through `Vec`.
#if defined(__AVX512F__)
#define RIM_SIMD 1
struct Vec {
  using Reg = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  static constexpr int kBlocks = 4;         // column blocks per tile: 64 columns
  static constexpr int kAccumulators = 24;  // of 32 registers
  // The lanes that hold the `rest` values left in a row (all of them when rest >= kWidth).
  static Mask mask(int64_t rest) { return rest >= 16 ? Mask(0xFFFF) : Mask((1u << rest) - 1); }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float a) { return _mm512_set1_ps(a); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void store(Mask m, float* p, Reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(Reg v) { return _mm512_reduce_add_ps(v); }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define RIM_SIMD 1
struct Vec {
  using Reg = __m256;
  using Mask = __m256i;
  static constexpr int kWidth = 8;
  static constexpr int kBlocks = 2;         // column blocks per tile: 16 columns
  static constexpr int kAccumulators = 12;  // of 16 registers
  static Mask mask(int64_t rest) {
    const int n = static_cast<int>(std::min<int64_t>(rest, 8));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float a) { return _mm256_set1_ps(a); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static void store(Mask m, float* p, Reg v) { _mm256_maskstore_ps(p, m, v); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(Reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};
#endif

#if defined(RIM_SIMD)
namespace simd {

constexpr int W = Vec::kWidth;

// C[MR x W*NV] (+)= A[MR x K] B[K x W*NV]: MR*NV accumulators stay in registers over the
// whole K loop. A's element (r, k) is at a[r * rsa + k * csa] (so a transposed A is just
// other strides); B is row-major with row stride ldb. Where `partial`, `last` masks the
// columns of the last W-wide block that exist.
template <int MR, int NV>
inline void tile(int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate, bool partial, Vec::Mask last) {
  // Masked loads and stores only where the last block is partial: a masked store cannot be
  // forwarded to a later load of the same data, which then waits for the store to retire.
  Vec::Reg acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[r][j] = Vec::zero();
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec::Reg bv[NV];
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      const float* row = b + k * ldb + W * j;
      bv[j] = j == NV - 1 && partial ? Vec::load(last, row) : Vec::load(row);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Vec::Reg av = Vec::set1(a[r * rsa + k * csa]);
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) acc[r][j] = Vec::fmadd(av, bv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      float* out = c + r * ldc + W * j;
      if (j == NV - 1 && partial) {
        Vec::Reg v = acc[r][j];
        if (accumulate) v = Vec::add(v, Vec::load(last, out));
        Vec::store(last, out, v);
      } else {
        Vec::store(out, accumulate ? Vec::add(acc[r][j], Vec::load(out)) : acc[r][j]);
      }
    }
  }
}

// The last M % MR rows, as one tile of that height.
template <int NV, int MR>
inline void remainder(int64_t m, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b, int64_t ldb,
                      float* c, int64_t ldc, bool accumulate, bool partial, Vec::Mask last) {
  if constexpr (MR > 0) {
    if (m == MR) return tile<MR, NV>(K, a, rsa, csa, b, ldb, c, ldc, accumulate, partial, last);
    remainder<NV, MR - 1>(m, K, a, rsa, csa, b, ldb, c, ldc, accumulate, partial, last);
  }
}

// One column block of W*NV over all M rows, in tiles of MR rows: about kAccumulators
// accumulators (at most 16 rows).
template <int NV>
void column_block(int64_t M, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b, int64_t ldb,
                  float* c, int64_t ldc, bool accumulate, bool partial, Vec::Mask last) {
  constexpr int MR = std::min(16, Vec::kAccumulators / NV);
  int64_t r = 0;
  for (; r + MR <= M; r += MR) {
    tile<MR, NV>(K, a + r * rsa, rsa, csa, b, ldb, c + r * ldc, ldc, accumulate, partial, last);
  }
  remainder<NV, MR - 1>(M - r, K, a + r * rsa, rsa, csa, b, ldb, c + r * ldc, ldc, accumulate, partial, last);
}

// The last N % (W * kBlocks) columns: a column block of NV vectors.
template <int NV>
inline void last_columns(int64_t blocks, int64_t M, int64_t K, const float* a, int64_t rsa, int64_t csa,
                         const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, bool partial,
                         Vec::Mask last) {
  if constexpr (NV > 0) {
    if (blocks == NV) return column_block<NV>(M, K, a, rsa, csa, b, ldb, c, ldc, accumulate, partial, last);
    last_columns<NV - 1>(blocks, M, K, a, rsa, csa, b, ldb, c, ldc, accumulate, partial, last);
  }
}

// Row-major C (M x N) (+)= A B, A's element (r, k) at a[r * rsa + k * csa], B (K x N).
inline void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  constexpr int64_t kColumns = W * Vec::kBlocks;
  const Vec::Mask full = Vec::mask(W);
  int64_t j = 0;
  for (; j + kColumns <= N; j += kColumns) {
    column_block<Vec::kBlocks>(M, K, a, rsa, csa, b + j, ldb, c + j, ldc, accumulate, false, full);
  }
  const int64_t rest = N - j;
  if (rest == 0) return;
  const int64_t tail = rest - W * ((rest - 1) / W);  // the last block's columns, 1..W
  last_columns<Vec::kBlocks>((rest + W - 1) / W, M, K, a, rsa, csa, b + j, ldb, c + j, ldc, accumulate, tail < W,
                             Vec::mask(tail));
}

}  // namespace simd
#endif

// Row-major C (M x N) = op(A) B, or += with `accumulate`, where op(A) is M x K and B is
// K x N. A is stored M x K (or K x M when ta), B is stored K x N. lda, ldb, ldc: the row
// strides of A, B and C as stored. Float runs the SIMD kernel above where the build
// has AVX-512F or AVX2 with FMA; otherwise the BLAS, which is column-major: C^T = B^T op(A)^T, hence the
// swapped operands.
template <typename T>
inline void mm_ld(bool ta, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                  bool accumulate, T* C, int64_t ldc) {
#if defined(RIM_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    return simd::gemm(M, N, K, A, ta ? 1 : lda, ta ? lda : 1, B, ldb, C, ldc, accumulate);
  }
#endif
  blas_gemm<T>('N', ta ? 'T' : 'N', static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), T(1), B,
               static_cast<int>(ldb), A, static_cast<int>(lda), accumulate ? T(1) : T(0), C, static_cast<int>(ldc));
}

// The same, for contiguous operands.
template <typename T>
inline void mm(bool ta, int64_t M, int64_t N, int64_t K, const T* A, const T* B, bool accumulate, T* C) {
  mm_ld<T>(ta, M, N, K, A, ta ? M : K, B, N, accumulate, C, N);
}

// exp, sigmoid and tanh. float: branch-free so that loops over a row vectorize; Cephes'
// expf range reduction and polynomial (about 1 ulp on the clamped range), and
// tanh(x) = 1 - 2 / (exp(2x) + 1) (absolute error about 1e-7). double: the C library's.
template <typename T>
inline T exp_(T x) {
  return std::exp(x);
}

template <>
inline float exp_<float>(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

template <typename T>
inline T tanh_(T x) {
  return std::tanh(x);
}

template <>
inline float tanh_<float>(float x) {
  return 1.0f - 2.0f / (exp_(2.0f * x) + 1.0f);
}

// Dot product of two rows; the reduction may be reordered (vectorized).
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[e] = sum_j w[j] * rows[j * stride + e] for e < n (plus out[e] with `accumulate`):
// a weighted sum of `count` rows, e.g. an attention read over the units.
template <typename T>
inline void weighted_sum(T* out, const T* w, const T* rows, int64_t stride, int64_t count, int64_t n,
                         bool accumulate) {
  if (!accumulate) std::fill(out, out + n, T(0));
  for (int64_t j = 0; j < count; ++j) {
    const T* row = rows + j * stride;
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) out[e] += w[j] * row[e];
  }
}

// y[e] += a * x[e] for e < n.
template <typename T>
inline void axpy(T* y, T a, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) y[e] += a * x[e];
}

#if defined(RIM_SIMD)
// Float: full vectors unmasked, the tail masked. (A masked store cannot be forwarded to a
// later load of the same row, which then waits for the store to retire: the next unit adds
// to the same rows.)

template <>
inline void axpy<float>(float* y, float a, const float* x, int64_t n) {
  const Vec::Reg av = Vec::set1(a);
  int64_t e = 0;
  for (; e + simd::W <= n; e += simd::W) Vec::store(y + e, Vec::fmadd(av, Vec::load(x + e), Vec::load(y + e)));
  if (e < n) {
    const Vec::Mask m = Vec::mask(n - e);
    Vec::store(m, y + e, Vec::fmadd(av, Vec::load(m, x + e), Vec::load(m, y + e)));
  }
}

// The float versions keep each vector of the sum in a register over all rows (the generic
// loop above adds in memory, where each row waits on the previous row's store, and the
// compiler vectorizes the dot product's short rows poorly).
template <>
inline float dot<float>(const float* a, const float* b, int64_t n) {
  Vec::Reg acc = Vec::zero();
  int64_t i = 0;
  for (; i + simd::W <= n; i += simd::W) acc = Vec::fmadd(Vec::load(a + i), Vec::load(b + i), acc);
  if (i < n) {
    const Vec::Mask m = Vec::mask(n - i);
    acc = Vec::fmadd(Vec::load(m, a + i), Vec::load(m, b + i), acc);
  }
  return Vec::sum(acc);
}

template <>
inline void weighted_sum<float>(float* out, const float* w, const float* rows, int64_t stride, int64_t count,
                                int64_t n, bool accumulate) {
  int64_t e = 0;
  for (; e + simd::W <= n; e += simd::W) {
    Vec::Reg acc = accumulate ? Vec::load(out + e) : Vec::zero();
    for (int64_t j = 0; j < count; ++j) acc = Vec::fmadd(Vec::set1(w[j]), Vec::load(rows + j * stride + e), acc);
    Vec::store(out + e, acc);
  }
  if (e < n) {
    const Vec::Mask m = Vec::mask(n - e);
    Vec::Reg acc = accumulate ? Vec::load(m, out + e) : Vec::zero();
    for (int64_t j = 0; j < count; ++j) {
      acc = Vec::fmadd(Vec::set1(w[j]), Vec::load(m, rows + j * stride + e), acc);
    }
    Vec::store(m, out + e, acc);
  }
}
#endif

// Scratch rows aligned to cache lines (64 bytes), as the saved buffers are: a 64-byte
// vector load or store that straddles two lines costs two accesses, and a store split so
// cannot be forwarded to the load that reads it back (the next unit's update of the same
// row), which then waits for the store to retire. Measured: unaligned scratch rows made
// the attention's backward 2x slower (docs/native.md).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <typename T>
using Rows = std::vector<T, CacheLineAllocator<T>>;

// Ask for the cache lines of [p, p + bytes) ahead of their use. The backward reads what
// the forward saved long before (out of cache by then) in an order the hardware
// prefetcher does not follow (docs/native.md).
inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i);
}

// Buffers saved for the backward come from a cache of freed blocks. Their shapes recur
// call after call, and a fresh allocation this large is mapped and page-faulted in each
// time (measured: about a third of a paper-size forward). Freed blocks are kept up to
// kCacheLimit bytes; empty_cache() returns them to the system.
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

  // A block of at least `bytes` (at most 25% more), 64-byte aligned, and its size.
  std::pair<void*, size_t> take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 4) {
        const auto block = std::make_pair(it->second, it->first);
        cached_ -= it->first;
        free_.erase(it);
        return block;
      }
    }
    const size_t size = (bytes + 63) / 64 * 64;
    void* data = std::aligned_alloc(64, size);
    TORCH_CHECK(data != nullptr, "rim_layer: out of memory allocating ", size, " bytes");
    return {data, size};
  }

  void give(void* data, size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ + size > kCacheLimit) {
      std::free(data);
      return;
    }
    free_.emplace(size, data);
    cached_ += size;
  }

  size_t empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t released = cached_;
    for (auto& block : free_) std::free(block.second);
    free_.clear();
    cached_ = 0;
    return released;
  }

 private:
  static constexpr size_t kCacheLimit = size_t(2) << 30;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (bytes == 0) return at::empty(sizes, options);
  const auto block = BlockCache::instance().take(bytes);
  const size_t size = block.second;
  return at::from_blob(
      block.first, sizes, [size](void* data) { BlockCache::instance().give(data, size); }, options);
}

// The per-step matmuls are small: splitting them across threads costs more (a wake-up
// per call) than it saves. Measured at 2 threads: paper size 1.10x -> 1.26x nn.LSTM, the
// RL shapes 3.7x -> 5.5x. So the op asks MKL for one thread while it runs.
class OneBlasThread {
 public:
  OneBlasThread() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : -1) {}
  ~OneBlasThread() {
    if (previous_ >= 0) MKL_Set_Num_Threads_Local(previous_);
  }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;

 private:
  int previous_;
};

// Threads split the units. A unit's weights, state and weight gradients are its own, so
// threads that own disjoint units never write the same memory; the parts of a step that
// mix units (the top-k ranking, communication) meet at a barrier. The caller is member 0
// of the team; the others are persistent workers, started on first use and asleep on a
// condition variable between calls, so a call costs one wake-up, not a thread start.
class Team {
 public:
  // A forked child has none of the parent's workers: it gets a fresh team. (torch's own
  // intra-op pool hangs in a forked child at more than one thread, measured with torch
  // 2.13, so a child should set one thread or the parent use spawn.)
  static Team& instance() {
    static std::once_flag registered;
    std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, [] { team_ = new Team(); }); });
    return *team_;  // never destroyed: workers may still be asleep at exit
  }

  // body(member, size) on `size` threads, the caller as member 0; returns when all are done.
  void run(int size, const std::function<void(int, int)>& body) {
    if (size <= 1) {
      body(0, 1);
      return;
    }
    std::lock_guard<std::mutex> one_call(call_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (int index = workers_ + 1; index < size; ++index, ++workers_) {
        std::thread([this, index] { work(index); }).detach();
      }
      body_ = &body;
      size_ = size;
      unfinished_.store(size - 1, std::memory_order_relaxed);
      ++job_;
    }
    wake_.notify_all();
    body(0, size);
    wait_until([this] { return unfinished_.load(std::memory_order_acquire) == 0; });
  }

  // Every member of a run of `size` threads waits here until all have arrived.
  void barrier(int size) {
    if (size <= 1) return;
    const int64_t phase = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
    } else {
      wait_until([&] { return phase_.load(std::memory_order_acquire) != phase; });
    }
  }

 private:
  Team() = default;

  // Spin (the waits are microseconds long), yielding the core after a while in case the
  // thread waited for is not running.
  template <typename Done>
  static void wait_until(Done done) {
    for (int spins = 0; !done(); ++spins) {
      if (spins > 2000) std::this_thread::yield();
    }
  }

  void work(int index) {
    int64_t seen = 0;
    for (;;) {
      const std::function<void(int, int)>* body;
      int size;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return job_ != seen; });
        seen = job_;
        body = body_;
        size = size_;
      }
      if (index >= size) continue;
      {
        OneBlasThread one_thread;
        (*body)(index, size);
      }
      unfinished_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  static Team* team_;
  std::mutex call_mutex_, mutex_;
  std::condition_variable wake_;
  const std::function<void(int, int)>* body_ = nullptr;
  int size_ = 1, workers_ = 0;
  int64_t job_ = 0;
  std::atomic<int> unfinished_{0}, arrived_{0};
  std::atomic<int64_t> phase_{0};
};

Team* Team::team_ = new Team();

struct Dims {
  int64_t L, N, D, K, H, G, Q, A, E, V, W, R, O, top_k;
  bool lstm, comm, gated;
};

// Members of the team for one call: torch's intra-op thread count, at most one per unit,
// and one where the loop is too short to repay the wake-up and the barriers.
constexpr int64_t kMinTeamWork = int64_t(1) << 22;  // L*N*K*H*H; see docs/native.md

int team_size(const Dims& d) {
  if (d.L * d.N * d.K * d.H * d.H < kMinTeamWork) return 1;
  return static_cast<int>(std::min<int64_t>(at::get_num_threads(), d.K));
}

// Optional tensors arrive as undefined Tensors; data pointer or null.
template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
std::vector<Tensor> forward_impl(const Dims& d, const Tensor& keys, const Tensor& x_t, const Tensor& w_in,
                                 const Tensor& h0,
                                 const Tensor& c0, const Tensor& keep_t, const Tensor& w_rec, const Tensor& b_rec,
                                 const Tensor& b_ih, const Tensor& in_mask_t, const Tensor& qkv_w,
                                 const Tensor& out_w, const Tensor& out_b, const Tensor& comm_mask_t) {
  const int64_t L = d.L, N = d.N, D = d.D, K = d.K, H = d.H, G = d.G, Q = d.Q, GQ = G + Q;
  const int64_t A = d.A, E = d.E, V = d.V, W = d.W, R = d.R, O = d.O;
  auto opts = keys.options();
  Tensor output = cached_empty({L, N, K * H}, opts);
  Tensor hp = cached_empty({K, L, N, H}, opts);  // state entering each step, after the reset
  Tensor cp = cached_empty({d.lstm ? L : 0, K, N, H}, opts);
  Tensor act = cached_empty({L, K, N, 4 * H}, opts);  // LSTM i f o g; GRU r z n (W_hn h + b_hn)
  Tensor tc = cached_empty({d.lstm ? L : 0, K, N, H}, opts);  // tanh(c_new)
  Tensor wsig = cached_empty({L, K, N}, opts);                // sigmoid(score), before dropout
  Tensor query = cached_empty({L, K, N, Q}, opts);
  Tensor active = cached_empty({L, K, N}, opts.dtype(at::kBool));
  Tensor h1 = cached_empty({d.comm ? K : 0, L, N, H}, opts);  // communication input
  // Sample-major, (L, N, K, W): the attention reads all units' rows of one sample, which
  // then lie side by side (the backward streams them back from memory; docs/native.md).
  Tensor qkv = cached_empty({d.comm ? L : 0, N, K, W}, opts);
  Tensor att = cached_empty({d.comm ? L : 0, N, A, K, K}, opts);  // softmax, before dropout
  Tensor read = cached_empty({d.comm ? K : 0, L, N, R}, opts);
  Tensor pact = cached_empty({d.comm && d.gated ? L : 0, K, N, 2 * H}, opts);  // tanh(out), sigmoid(gate)
  Tensor h = h0.clone();
  Tensor c = d.lstm ? c0.clone() : at::zeros_like(h0);

  const T* keys_p = keys.data_ptr<T>();
  const T* x_p = x_t.data_ptr<T>();
  const T* win_p = w_in.data_ptr<T>();
  const T* keep = ptr_or_null<T>(keep_t);
  const T* wr_p = w_rec.data_ptr<T>();
  const T* br_p = b_rec.data_ptr<T>();
  const T* bih_p = ptr_or_null<T>(b_ih);
  const T* in_mask = ptr_or_null<T>(in_mask_t);
  const T* qkvw_p = ptr_or_null<T>(qkv_w);
  const T* ow_p = ptr_or_null<T>(out_w);
  const T* ob_p = ptr_or_null<T>(out_b);
  const T* comm_mask = ptr_or_null<T>(comm_mask_t);
  T* out_p = output.data_ptr<T>();
  T* hp_p = hp.data_ptr<T>();
  T* cp_p = d.lstm ? cp.data_ptr<T>() : nullptr;
  T* act_p = act.data_ptr<T>();
  T* tc_p = d.lstm ? tc.data_ptr<T>() : nullptr;
  T* w_p = wsig.data_ptr<T>();
  T* query_p = query.data_ptr<T>();
  bool* active_p = active.data_ptr<bool>();
  T* h1_p = d.comm ? h1.data_ptr<T>() : nullptr;
  T* qkv_p = d.comm ? qkv.data_ptr<T>() : nullptr;
  T* att_p = d.comm ? att.data_ptr<T>() : nullptr;
  T* read_p = d.comm ? read.data_ptr<T>() : nullptr;
  T* pact_p = d.comm && d.gated ? pact.data_ptr<T>() : nullptr;
  T* h_p = h.data_ptr<T>();
  T* c_p = c.data_ptr<T>();
  const T inv_sqrt_e = T(1) / std::sqrt(T(E));
  Rows<T> scores(2 * K * N);  // by step parity: one member may rank step t while another scores t+1
  const int size = team_size(d);

  // Member `member` of `members` owns units [k0, k1): their resets, queries, updates, qkv and
  // reads. Barriers: all scores before the ranking, all qkv before the attention.
  auto body = [&](int member, int members) {
    const int64_t k0 = K * member / members, k1 = K * (member + 1) / members;
    Rows<T> gbuf(N * G), xbuf(N * G), hrows(N * H), xrows(N * D), pbuf(N * O), gathered(N * R), logits(K);
    std::vector<int64_t> rows(N);
    for (int64_t t = 0; t < L; ++t) {
      T* score = scores.data() + (t % 2) * K * N;
      // Reset, and save the state entering the step.
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t n = 0; n < N; ++n) {
          const T kp = keep ? keep[t * N + n] : T(1);
          T* hs = h_p + (k * N + n) * H;
          T* hsave = hp_p + ((k * L + t) * N + n) * H;
          for (int64_t i = 0; i < H; ++i) hsave[i] = hs[i] = hs[i] * kp;
          if (d.lstm) {
            T* cs = c_p + (k * N + n) * H;
            T* csave = cp_p + ((t * K + k) * N + n) * H;
            for (int64_t i = 0; i < H; ++i) csave[i] = cs[i] = cs[i] * kp;
          }
        }
      }
      // Input queries, h @ W_q (the query columns of w_rec), and their scores against this
      // step's input keys (the null row scores 0).
      const T* keys_t = keys_p + t * N * Q;
      for (int64_t k = k0; k < k1; ++k) {
        T* q = query_p + (t * K + k) * N * Q;
        mm_ld<T>(false, N, Q, H, h_p + k * N * H, H, wr_p + k * H * GQ + G, GQ, false, q, Q);
        for (int64_t n = 0; n < N; ++n) score[k * N + n] = dot(q + n * Q, keys_t + n * Q, Q);
      }
      Team::instance().barrier(members);
      // Top-k per sample: a unit is active when fewer than top_k units rank above it;
      // ties go to the lower unit index (the PyTorch path's stable sort).
      bool* act_t = active_p + t * K * N;
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = k0; k < k1; ++k) {
          const T s = score[k * N + n];
          int64_t rank = 0;
          for (int64_t j = 0; j < K; ++j) {
            const T o = score[j * N + n];
            rank += (o > s) || (o == s && j < k);
          }
          act_t[k * N + n] = rank < d.top_k;
        }
      }
      // Unit dynamics of the active units; inactive units keep h and c as they are. Their
      // hidden-to-gate terms, b + h @ W_hh, and input-to-gate terms, x @ W_in (a unit that
      // reads with weight 1), each in one matmul over the unit's active rows.
      const T* x_step = x_p + t * N * D;
      for (int64_t k = k0; k < k1; ++k) {
        int64_t m = 0;
        for (int64_t n = 0; n < N; ++n) {
          w_p[t * K * N + k * N + n] = sigmoid(score[k * N + n]);
          if (!act_t[k * N + n]) continue;
          std::memcpy(hrows.data() + m * H, h_p + (k * N + n) * H, H * sizeof(T));
          std::memcpy(xrows.data() + m * D, x_step + n * D, D * sizeof(T));
          std::memcpy(gbuf.data() + m * G, br_p + k * GQ, G * sizeof(T));
          rows[m++] = n;
        }
        if (m == 0) continue;
        mm_ld<T>(false, m, G, H, hrows.data(), H, wr_p + k * H * GQ, GQ, true, gbuf.data(), G);
        mm_ld<T>(false, m, G, D, xrows.data(), D, win_p + k * G, K * G, false, xbuf.data(), G);
        for (int64_t r = 0; r < m; ++r) {
          const int64_t n = rows[r];
          const int64_t kn = k * N + n;
          const T wv = w_p[t * K * N + kn];
          const T wd = in_mask ? wv * in_mask[t * K * N + kn] : wv;
          const T* hg = gbuf.data() + r * G;
          const T* x = xbuf.data() + r * G;
          T* a = act_p + ((t * K + k) * N + n) * 4 * H;
          T* hs = h_p + kn * H;
          if (d.lstm) {
            T* cs = c_p + kn * H;
            T* tcs = tc_p + ((t * K + k) * N + n) * H;
            #pragma omp simd
            for (int64_t i = 0; i < H; ++i) {
              const T ig = sigmoid(hg[i] + wd * x[i]);
              const T fg = sigmoid(hg[H + i] + wd * x[H + i]);
              const T og = sigmoid(hg[2 * H + i] + wd * x[2 * H + i]);
              const T gg = tanh_(hg[3 * H + i] + wd * x[3 * H + i]);
              const T cn = fg * cs[i] + ig * gg;
              const T tcn = tanh_(cn);
              a[i] = ig, a[H + i] = fg, a[2 * H + i] = og, a[3 * H + i] = gg;
              tcs[i] = tcn;
              cs[i] = cn;
              hs[i] = og * tcn;
            }
          } else {
            const T* bi = bih_p + k * G;
            #pragma omp simd
            for (int64_t i = 0; i < H; ++i) {
              const T r = sigmoid(bi[i] + wd * x[i] + hg[i]);
              const T z = sigmoid(bi[H + i] + wd * x[H + i] + hg[H + i]);
              const T hn = hg[2 * H + i];
              const T nn = tanh_(bi[2 * H + i] + wd * x[2 * H + i] + r * hn);
              a[i] = r, a[H + i] = z, a[2 * H + i] = nn, a[3 * H + i] = hn;
              hs[i] = nn + z * (hs[i] - nn);
            }
          }
        }
      }
      if (d.comm) {
        // Query, key and value of each unit from its state after the update (rows n*K + k).
        T* qkv_t = qkv_p + t * K * N * W;
        for (int64_t k = k0; k < k1; ++k) {
          std::memcpy(h1_p + (k * L + t) * N * H, h_p + k * N * H, N * H * sizeof(T));
          mm_ld<T>(false, N, W, H, h_p + k * N * H, H, qkvw_p + k * H * W, W, false, qkv_t + k * W, K * W);
        }
        Team::instance().barrier(members);
        // Reads of the active units only (an inactive unit's read is never added); the
        // read rows of inactive units stay zero for the weight gradient's matmul.
        for (int64_t k = k0; k < k1; ++k) {
          for (int64_t n = 0; n < N; ++n) {
            T* rd = read_p + ((k * L + t) * N + n) * R;
            std::fill(rd, rd + R, T(0));
            if (!act_t[k * N + n]) continue;
            for (int64_t a = 0; a < A; ++a) {
              T* att_row = att_p + (((t * N + n) * A + a) * K + k) * K;
              const T* mask_row = comm_mask ? comm_mask + (((t * N + n) * A + a) * K + k) * K : nullptr;
              const T* q = qkv_t + (n * K + k) * W + a * E;
              T top = -INFINITY;
              for (int64_t j = 0; j < K; ++j) {
                logits[j] = dot(q, qkv_t + (n * K + j) * W + A * E + a * E, E) * inv_sqrt_e;
                top = std::max(top, logits[j]);
              }
              T sum = 0;
              for (int64_t j = 0; j < K; ++j) sum += (logits[j] = exp_(logits[j] - top));
              for (int64_t j = 0; j < K; ++j) {
                const T p = logits[j] / sum;
                att_row[j] = p;
                logits[j] = mask_row ? p * mask_row[j] : p;  // the weight after dropout
              }
              // The read, sum_j p_j v_j (unit j's value at + j * W: rows n*K + j).
              weighted_sum(rd + a * V, logits.data(), qkv_t + n * K * W + 2 * A * E + a * V, W, K, V, false);
            }
          }
        }
        // Each unit maps its active rows' reads back with its own output weights (one
        // matmul over the gathered rows) and adds the result.
        for (int64_t k = k0; k < k1; ++k) {
          int64_t m = 0;
          for (int64_t n = 0; n < N; ++n) {
            if (!act_t[k * N + n]) continue;
            rows[m] = n;
            std::memcpy(gathered.data() + m * R, read_p + ((k * L + t) * N + n) * R, R * sizeof(T));
            if (d.gated) std::memcpy(pbuf.data() + m * O, ob_p + k * O, O * sizeof(T));
            ++m;
          }
          if (m == 0) continue;
          mm<T>(false, m, O, R, gathered.data(), ow_p + k * R * O, d.gated, pbuf.data());
          for (int64_t r = 0; r < m; ++r) {
            const int64_t n = rows[r];
            T* hs = h_p + (k * N + n) * H;
            const T* p = pbuf.data() + r * O;
            if (d.gated) {
              T* pa = pact_p + ((t * K + k) * N + n) * 2 * H;
              #pragma omp simd
              for (int64_t i = 0; i < H; ++i) {
                const T to = tanh_(p[i]);
                const T sg = sigmoid(p[H + i]);
                pa[i] = to, pa[H + i] = sg;
                hs[i] += sg * to;
              }
            } else {
              for (int64_t i = 0; i < H; ++i) hs[i] += p[i];
            }
          }
        }
      }
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t n = 0; n < N; ++n) {
          std::memcpy(out_p + (t * N + n) * K * H + k * H, h_p + (k * N + n) * H, H * sizeof(T));
        }
      }
    }
  };
  Team::instance().run(size, body);
  return {output, h, c, active, hp, cp, act, tc, wsig, query, h1, qkv, att, read, pact};
}

template <typename T>
std::vector<Tensor> backward_impl(const Dims& d, const Tensor& grad_out_t, const Tensor& grad_hn,
                                  const Tensor& grad_cn, const std::vector<Tensor>& saved, const Tensor& keys,
                                  const Tensor& x_t, const Tensor& w_in, const Tensor& keep_t, const Tensor& w_rec,
                                  const Tensor& b_ih,
                                  const Tensor& in_mask_t, const Tensor& qkv_w, const Tensor& out_w,
                                  const Tensor& comm_mask_t) {
  const int64_t L = d.L, N = d.N, D = d.D, K = d.K, H = d.H, G = d.G, Q = d.Q, GQ = G + Q;
  const int64_t A = d.A, E = d.E, V = d.V, W = d.W, R = d.R, O = d.O;
  const Tensor &hp = saved[0], &cp = saved[1], &act = saved[2], &tc = saved[3], &wsig = saved[4],
               &query = saved[5], &active = saved[6], &h1 = saved[7], &qkv = saved[8], &att = saved[9],
               &read = saved[10], &pact = saved[11];
  auto opts = keys.options();
  Tensor dkeys = cached_empty({L, N, Q}, opts).zero_();
  // Each unit's share of the input's gradient, summed over units after the loop.
  Tensor dx_units = cached_empty({L, K, N, D}, opts);
  // Weight gradients, accumulated step by step (no sequence-long gradient buffers).
  Tensor dw_in = at::zeros({D, K * G}, opts);
  Tensor dw_rec = at::zeros({K, H, GQ}, opts);
  Tensor db_rec = at::zeros({K, GQ}, opts);
  Tensor dqkv_w = d.comm ? at::zeros({K, H, W}, opts) : Tensor();
  Tensor dout_w = d.comm ? at::zeros({K, R, O}, opts) : Tensor();
  Tensor dout_b = d.comm && d.gated ? at::zeros({K, O}, opts) : Tensor();
  Tensor db_ih = at::zeros({d.lstm ? 0 : K, G}, opts);
  Tensor dh = grad_hn.clone();
  Tensor dc = d.lstm ? grad_cn.clone() : at::zeros_like(grad_hn);
  // Shared between members: per unit (dh1, dhp, dcp; dqkvt and dread_all by unit rows)
  // or per step (ds_all, the input-attention score gradients, folded into dkeys at the end).
  Rows<T> dh1(K * N * H), dhp(K * N * H), dcp(K * N * H);
  Rows<T> dqkvt(d.comm ? K * N * W : 0), dread_all(d.comm ? K * N * R : 0), ds_all(L * K * N);
  const int size = team_size(d);

  // The output's gradient is read through its strides: the gradient of a sum or mean of
  // the output arrives expanded (stride 0), and copying it out costs more than reading it.
  const T* gout = grad_out_t.data_ptr<T>();
  const int64_t gs0 = grad_out_t.stride(0), gs1 = grad_out_t.stride(1), gs2 = grad_out_t.stride(2);
  const T* keys_p = keys.data_ptr<T>();
  const T* x_p = x_t.data_ptr<T>();
  const T* keep = ptr_or_null<T>(keep_t);
  // The weights transposed once per call, so that every matmul below reads B row by row.
  const Tensor w_in_t = w_in.view({D, K, G}).permute({1, 2, 0}).contiguous();     // (K, G, D)
  const Tensor w_rec_t = w_rec.transpose(1, 2).contiguous();                       // (K, G+Q, H)
  const Tensor qkv_w_t = d.comm ? qkv_w.transpose(1, 2).contiguous() : Tensor();  // (K, W, H)
  const Tensor out_w_t = d.comm ? out_w.transpose(1, 2).contiguous() : Tensor();  // (K, O, R)
  const T* wint_p = w_in_t.data_ptr<T>();
  const T* wrt_p = w_rec_t.data_ptr<T>();
  const T* in_mask = ptr_or_null<T>(in_mask_t);
  const T* qkvwt_p = ptr_or_null<T>(qkv_w_t);
  const T* owt_p = ptr_or_null<T>(out_w_t);
  const T* comm_mask = ptr_or_null<T>(comm_mask_t);
  const T* hp_p = hp.data_ptr<T>();
  const T* cp_p = d.lstm ? cp.data_ptr<T>() : nullptr;
  const T* act_p = act.data_ptr<T>();
  const T* tc_p = d.lstm ? tc.data_ptr<T>() : nullptr;
  const T* w_p = wsig.data_ptr<T>();
  const T* query_p = query.data_ptr<T>();
  const bool* active_p = active.data_ptr<bool>();
  const T* qkv_p = d.comm ? qkv.data_ptr<T>() : nullptr;
  const T* att_p = d.comm ? att.data_ptr<T>() : nullptr;
  const T* pact_p = d.comm && d.gated ? pact.data_ptr<T>() : nullptr;
  T* dkeys_p = dkeys.data_ptr<T>();
  T* dxu_p = dx_units.data_ptr<T>();
  T* dwin_p = dw_in.data_ptr<T>();
  T* dqkv_p = d.comm ? dqkvt.data() : nullptr;  // this step's (N, K, W)
  const T* h1_p = d.comm ? h1.data_ptr<T>() : nullptr;
  const T* read_p = d.comm ? read.data_ptr<T>() : nullptr;
  T* dwr_p = dw_rec.data_ptr<T>();
  T* dbr_p = db_rec.data_ptr<T>();
  T* dqkvw_p = d.comm ? dqkv_w.data_ptr<T>() : nullptr;
  T* dow_p = d.comm ? dout_w.data_ptr<T>() : nullptr;
  T* dob_p = d.comm && d.gated ? dout_b.data_ptr<T>() : nullptr;
  T* dbih_p = d.lstm ? nullptr : db_ih.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  T* dc_p = dc.data_ptr<T>();
  const T inv_sqrt_e = T(1) / std::sqrt(T(E));


  // Member `member` of `members` owns units [k0, k1) and samples [n0, n1). Per step: the
  // read's backward by unit; barrier; the attention's backward by sample (it mixes units);
  // barrier; the qkv matmuls, unit dynamics and reset by unit. Without communication no
  // part of a step mixes units, and there are no barriers.
  auto body = [&](int member, int members) {
    const int64_t k0 = K * member / members, k1 = K * (member + 1) / members;
    const int64_t n0 = N * member / members, n1 = N * (member + 1) / members;
    Rows<T> dread(N * R), gathered(N * O), dattd(K);
    Rows<T> dgc(N * G), dxc(d.lstm ? 0 : N * G), dq_rows(N * Q), hrows(N * H), hgrad(N * H);
    Rows<T> xrows(N * D), ubuf(N * D), read_rows(d.comm ? N * R : 0);
    std::vector<int64_t> rows(N);
    for (int64_t t = L - 1; t >= 0; --t) {
      const bool* act_t = active_p + t * K * N;
      // dh: gradient of the state leaving step t (its output, and what step t+1 read).
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t n = 0; n < N; ++n) {
          const T* g = gout + t * gs0 + n * gs1 + k * H * gs2;
          T* dst = dh_p + (k * N + n) * H;
          T* d1 = dh1.data() + (k * N + n) * H;
          if (gs2 == 1) {
#pragma omp simd
            for (int64_t i = 0; i < H; ++i) d1[i] = dst[i] += g[i];
          } else {
            for (int64_t i = 0; i < H; ++i) d1[i] = dst[i] += g[i * gs2];
          }
        }
      }
      if (d.comm) {
        const T* qkv_t = qkv_p + t * K * N * W;
        for (int64_t k = k0; k < k1; ++k) {
          for (int64_t n = 0; n < N; ++n) std::fill_n(dqkv_p + (n * K + k) * W, W, T(0));
        }
        for (int64_t k = k0; k < k1; ++k) {
          // The read of the active rows: h2 = h1 + f(read @ out_w + out_b), gathered.
          int64_t m = 0;
          for (int64_t n = 0; n < N; ++n) {
            if (!act_t[k * N + n]) continue;
            const T* g = dh_p + (k * N + n) * H;
            T* dp = gathered.data() + m * O;
            if (d.gated) {
              const T* pa = pact_p + ((t * K + k) * N + n) * 2 * H;
#pragma omp simd
              for (int64_t i = 0; i < H; ++i) {
                const T to = pa[i], sg = pa[H + i];
                dp[i] = g[i] * sg * (T(1) - to * to);
                dp[H + i] = g[i] * to * sg * (T(1) - sg);
              }
            } else {
              std::memcpy(dp, g, H * sizeof(T));
            }
            std::memcpy(read_rows.data() + m * R, read_p + ((k * L + t) * N + n) * R, R * sizeof(T));
            rows[m] = n;
            ++m;
          }
          if (m == 0) continue;
          mm<T>(true, R, O, m, read_rows.data(), gathered.data(), true, dow_p + k * R * O);
          if (d.gated) {
            for (int64_t r = 0; r < m; ++r) {
              for (int64_t i = 0; i < O; ++i) dob_p[k * O + i] += gathered[r * O + i];
            }
          }
          mm<T>(false, m, R, O, gathered.data(), owt_p + k * O * R, false, dread.data());
          for (int64_t r = 0; r < m; ++r) {
            std::memcpy(dread_all.data() + (k * N + rows[r]) * R, dread.data() + r * R, R * sizeof(T));
          }
        }
        Team::instance().barrier(members);
        for (int64_t n = n0; n < n1; ++n) {
          if (n + 2 < n1) prefetch(qkv_t + (n + 2) * K * W, K * W * sizeof(T));
          for (int64_t k = 0; k < K; ++k) {
            if (!act_t[k * N + n]) continue;
            for (int64_t a = 0; a < A; ++a) {
              const T* att_row = att_p + (((t * N + n) * A + a) * K + k) * K;
              const T* mask_row = comm_mask ? comm_mask + (((t * N + n) * A + a) * K + k) * K : nullptr;
              const T* dr = dread_all.data() + (k * N + n) * R + a * V;
              // The gradient of each (dropped-out) attention weight, and of the values.
              T total = 0;
              for (int64_t j = 0; j < K; ++j) {
                const T mj = mask_row ? mask_row[j] : T(1);
                const T pd = att_row[j] * mj;
                axpy(dqkv_p + (n * K + j) * W + 2 * A * E + a * V, pd, dr, V);
                dattd[j] = dot(dr, qkv_t + (n * K + j) * W + 2 * A * E + a * V, V) * mj;
                total += att_row[j] * dattd[j];
              }
              // Softmax and the scaled dot products: the query's gradient is a weighted sum
              // of the units' keys (unit j's at + j * W: rows n*K + j).
              for (int64_t j = 0; j < K; ++j) dattd[j] = att_row[j] * (dattd[j] - total) * inv_sqrt_e;
              const T* q = qkv_t + (n * K + k) * W + a * E;
              T* dq = dqkv_p + (n * K + k) * W + a * E;
              weighted_sum(dq, dattd.data(), qkv_t + n * K * W + A * E + a * E, W, K, E, true);
              for (int64_t j = 0; j < K; ++j) axpy(dqkv_p + (n * K + j) * W + A * E + a * E, dattd[j], q, E);
            }
          }
        }
        Team::instance().barrier(members);
        for (int64_t k = k0; k < k1; ++k) {
          mm_ld<T>(false, N, H, W, dqkv_p + k * W, K * W, qkvwt_p + k * W * H, H, true, dh1.data() + k * N * H, H);
          mm_ld<T>(true, H, W, N, h1_p + (k * L + t) * N * H, H, dqkv_p + k * W, K * W, true, dqkvw_p + k * H * W, W);
        }
      }
      // Unit dynamics: h1 = active ? h_new : h, c = active ? c_new : c. The gate gradients
      // of the active rows are gathered (dGc; dXc, the input term's, differs for a GRU).
      const T* x_step = x_p + t * N * D;
      for (int64_t k = k0; k < k1; ++k) {
        int64_t m = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t kn = k * N + n;
          const T* g1 = dh1.data() + kn * H;
          T* gh = dhp.data() + kn * H;
          if (!act_t[kn]) {
            // Inactive: the state passes through; the unit's update got no gradient.
            std::memcpy(gh, g1, H * sizeof(T));
            if (d.lstm) std::memcpy(dcp.data() + kn * H, dc_p + kn * H, H * sizeof(T));
            continue;
          }
          const T* a = act_p + ((t * K + k) * N + n) * 4 * H;
          const T* hprev = hp_p + ((k * L + t) * N + n) * H;
          const T wd = in_mask ? w_p[t * K * N + kn] * in_mask[t * K * N + kn] : w_p[t * K * N + kn];
          T* drow = dgc.data() + m * G;
          std::memcpy(hrows.data() + m * H, hprev, H * sizeof(T));
          const T* xr = x_step + n * D;
          T* xs = xrows.data() + m * D;
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) xs[i] = wd * xr[i];
          rows[m++] = n;
          if (d.lstm) {
            const T* gc = dc_p + kn * H;
            const T* cprev = cp_p + ((t * K + k) * N + n) * H;
            const T* tcs = tc_p + ((t * K + k) * N + n) * H;
            T* gcp = dcp.data() + kn * H;
#pragma omp simd
            for (int64_t i = 0; i < H; ++i) {
              const T ig = a[i], fg = a[H + i], og = a[2 * H + i], gg = a[3 * H + i], tcn = tcs[i];
              const T dcn = gc[i] + g1[i] * og * (T(1) - tcn * tcn);
              const T dpi = dcn * gg * ig * (T(1) - ig);
              const T dpf = dcn * cprev[i] * fg * (T(1) - fg);
              const T dpo = g1[i] * tcn * og * (T(1) - og);
              const T dpg = dcn * ig * (T(1) - gg * gg);
              gcp[i] = dcn * fg;
              gh[i] = 0;
              drow[i] = dpi, drow[H + i] = dpf, drow[2 * H + i] = dpo, drow[3 * H + i] = dpg;
            }
          } else {
            T* gb = dbih_p + k * G;
            T* dxr = dxc.data() + (m - 1) * G;
#pragma omp simd
            for (int64_t i = 0; i < H; ++i) {
              const T r = a[i], z = a[H + i], nn = a[2 * H + i], hn = a[3 * H + i];
              const T dpn = g1[i] * (T(1) - z) * (T(1) - nn * nn);
              const T dpz = g1[i] * (hprev[i] - nn) * z * (T(1) - z);
              const T dpr = dpn * hn * r * (T(1) - r);
              gh[i] = g1[i] * z;
              drow[i] = dpr, drow[H + i] = dpz, drow[2 * H + i] = dpn * r;
              // The input term's gradient: the same for r and z, dpn for n.
              dxr[i] = dpr, dxr[H + i] = dpz, dxr[2 * H + i] = dpn;
            }
#pragma omp simd
            for (int64_t i = 0; i < G; ++i) gb[i] += dxr[i];
          }
        }
        // Back through the input term w * (x @ W_in) of the active rows: U = dXc @ W_in^T
        // gives the input's gradient (w U) and the read weight's (x . U).
        const T* dxc_p = d.lstm ? dgc.data() : dxc.data();
        if (m > 0) {
          mm_ld<T>(false, m, D, G, dxc_p, G, wint_p + k * G * D, D, false, ubuf.data(), D);
          mm_ld<T>(true, D, G, m, xrows.data(), D, dxc_p, G, true, dwin_p + k * G, K * G);
        }
        // Input attention: w = sigmoid(query . key), the query from h (t-1). The key's
        // gradient sums over units, so it is formed after the loop from ds_all. An
        // inactive unit's score reaches nothing but its discarded update: no gradient.
        for (int64_t n = 0, r = 0; n < N; ++n) {
          const int64_t kn = k * N + n;
          T* dxu = dxu_p + ((t * K + k) * N + n) * D;
          T* dq = dq_rows.data() + n * Q;
          if (!act_t[kn]) {
            ds_all[(t * K + k) * N + n] = 0;
            std::fill(dxu, dxu + D, T(0));
            std::fill(dq, dq + Q, T(0));
            continue;
          }
          const T* u = ubuf.data() + r++ * D;
          const T wv = w_p[t * K * N + kn];
          const T mask = in_mask ? in_mask[t * K * N + kn] : T(1);
          const T wd = wv * mask;
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) dxu[i] = wd * u[i];
          const T ds = dot(x_step + n * D, u, D) * mask * wv * (T(1) - wv);
          ds_all[(t * K + k) * N + n] = ds;
          const T* key = keys_p + (t * N + n) * Q;
#pragma omp simd
          for (int64_t j = 0; j < Q; ++j) dq[j] = ds * key[j];
        }
        // Back through R = [b + h W_hh (active rows), h W_q (all rows)] of unit k.
        const T* w_hh_t = wrt_p + k * GQ * H;  // (G+Q, H): gate rows, then query rows
        T* dw = dwr_p + k * H * GQ;
        mm_ld<T>(false, N, H, Q, dq_rows.data(), Q, w_hh_t + G * H, H, true, dhp.data() + k * N * H, H);
        mm_ld<T>(true, H, Q, N, hp_p + (k * L + t) * N * H, H, dq_rows.data(), Q, true, dw + G, GQ);
        if (m == 0) continue;
        mm_ld<T>(false, m, H, G, dgc.data(), G, w_hh_t, H, false, hgrad.data(), H);
        for (int64_t r = 0; r < m; ++r) {
          T* gh = dhp.data() + (k * N + rows[r]) * H;
          const T* g = hgrad.data() + r * H;
#pragma omp simd
          for (int64_t i = 0; i < H; ++i) gh[i] += g[i];
        }
        mm_ld<T>(true, H, G, m, hrows.data(), H, dgc.data(), G, true, dw, GQ);
        T* db = dbr_p + k * GQ;
        for (int64_t r = 0; r < m; ++r) {
#pragma omp simd
          for (int64_t i = 0; i < G; ++i) db[i] += dgc[r * G + i];
        }
      }
      // The reset before step t: gradient reaches the previous state only where it was kept.
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t n = 0; n < N; ++n) {
          const T kp = keep ? keep[t * N + n] : T(1);
          const int64_t base = (k * N + n) * H;
          for (int64_t i = 0; i < H; ++i) dh_p[base + i] = dhp[base + i] * kp;
          if (d.lstm) {
            for (int64_t i = 0; i < H; ++i) dc_p[base + i] = dcp[base + i] * kp;
          }
        }
      }
    }
  };
  Team::instance().run(size, body);
  // The input keys' gradient: the score gradient times the query, summed over units.
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = 0; n < N; ++n) {
        const T ds = ds_all[(t * K + k) * N + n];
        const T* q = query_p + ((t * K + k) * N + n) * Q;
        T* dkey = dkeys_p + (t * N + n) * Q;
        for (int64_t j = 0; j < Q; ++j) dkey[j] += ds * q[j];
      }
    }
  }
  // The input's gradient: the units' shares, summed in unit order.
  Tensor dx = cached_empty({L, N, D}, opts);
  T* dx_p = dx.data_ptr<T>();
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      T* row = dx_p + (t * N + n) * D;
      std::memcpy(row, dxu_p + (t * K * N + n) * D, D * sizeof(T));
      for (int64_t k = 1; k < K; ++k) {
        const T* part = dxu_p + ((t * K + k) * N + n) * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) row[i] += part[i];
      }
    }
  }
  if (!d.lstm) dc = Tensor();
  return {dkeys, dx, dh, dc, dw_rec, db_rec, d.lstm ? Tensor() : db_ih, dw_in, dqkv_w, dout_w, dout_b};
}

Dims make_dims(const Tensor& x, const Tensor& w_in, const Tensor& h0, const Tensor& keys,
               const c10::optional<Tensor>& qkv_w, const c10::optional<Tensor>& out_b, int64_t top_k, bool lstm,
               int64_t heads, int64_t key_size, int64_t value_size) {
  Dims d{};
  d.L = x.size(0);
  d.N = x.size(1);
  d.D = x.size(2);
  d.K = h0.size(0);
  d.H = h0.size(2);
  d.G = (lstm ? 4 : 3) * d.H;
  d.Q = keys.size(2);
  d.top_k = top_k;
  d.lstm = lstm;
  d.comm = qkv_w.has_value() && qkv_w->defined();
  d.gated = out_b.has_value() && out_b->defined();
  d.A = heads;
  d.E = key_size;
  d.V = value_size;
  d.W = heads * (2 * key_size + value_size);
  d.R = heads * value_size;
  d.O = d.gated ? 2 * d.H : d.H;
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) == d.D && w_in.size(1) == d.K * d.G, "rim_layer: w_in must be (",
              d.D, ", ", d.K * d.G, "), got ", w_in.sizes());
  return d;
}

Tensor opt(const c10::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

void check_inputs(const std::vector<Tensor>& tensors, const Tensor& like, bool contiguous = true) {
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    TORCH_CHECK(t.device().is_cpu(), "rim_layer: every tensor must be on the CPU");
    TORCH_CHECK(t.scalar_type() == like.scalar_type(), "rim_layer: every tensor must have dtype ",
                like.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(!contiguous || t.is_contiguous(), "rim_layer: every tensor must be contiguous");
  }
}

// keys (L, N, Q); x (L, N, D); w_in (D, K*G); h0, c0 (K, N, H); keep (L, N); w_rec (K, H, G+Q);
// b_rec (K, G+Q); b_ih (K, G) for a GRU; in_mask (L, K, N); qkv_w (K, H, W);
// out_w (K, R, O); out_b (K, 2H) for the gated read; comm_mask (L, N, A, K, K).
// Returns output (L, N, K*H), h_n, c_n (K, N, H), active (L, K, N), then what the
// backward needs.
std::vector<Tensor> rim_layer_forward(const Tensor& keys, const Tensor& x, const Tensor& w_in, const Tensor& h0,
                                      const Tensor& c0,
                                      const c10::optional<Tensor>& keep, const Tensor& w_rec, const Tensor& b_rec,
                                      const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& in_mask,
                                      const c10::optional<Tensor>& qkv_w, const c10::optional<Tensor>& out_w,
                                      const c10::optional<Tensor>& out_b, const c10::optional<Tensor>& comm_mask,
                                      int64_t top_k, bool lstm, int64_t heads, int64_t key_size,
                                      int64_t value_size) {
  check_inputs({keys, x, w_in, h0, c0, opt(keep), w_rec, b_rec, opt(b_ih), opt(in_mask), opt(qkv_w), opt(out_w),
                opt(out_b), opt(comm_mask)},
               keys);
  const Dims d = make_dims(x, w_in, h0, keys, qkv_w, out_b, top_k, lstm, heads, key_size, value_size);
  at::NoGradGuard no_grad;
  OneBlasThread one_thread;
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rim_layer_forward", [&] {
    result = forward_impl<scalar_t>(d, keys, x, w_in, h0, c0, opt(keep), w_rec, b_rec, opt(b_ih), opt(in_mask),
                                    opt(qkv_w), opt(out_w), opt(out_b), opt(comm_mask));
  });
  return result;
}

// Gradients of keys, x, h0, c0, w_rec, b_rec, b_ih, w_in, qkv_w, out_w, out_b (undefined where
// the input was absent).
std::vector<Tensor> rim_layer_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                       const std::vector<Tensor>& saved, const Tensor& keys, const Tensor& x,
                                       const Tensor& w_in, const Tensor& h0, const c10::optional<Tensor>& keep, const Tensor& w_rec,
                                       const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& in_mask,
                                       const c10::optional<Tensor>& qkv_w, const c10::optional<Tensor>& out_w,
                                       const c10::optional<Tensor>& out_b, const c10::optional<Tensor>& comm_mask,
                                       int64_t top_k, bool lstm, int64_t heads, int64_t key_size,
                                       int64_t value_size) {
  check_inputs({grad_hn, grad_cn}, keys);
  check_inputs({grad_out}, keys, false);  // read through its strides
  TORCH_CHECK(grad_out.dim() == 3, "rim_layer: grad_out must be (L, N, K*H)");
  const Dims d = make_dims(x, w_in, h0, keys, qkv_w, out_b, top_k, lstm, heads, key_size, value_size);
  at::NoGradGuard no_grad;
  OneBlasThread one_thread;
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rim_layer_backward", [&] {
    result = backward_impl<scalar_t>(d, grad_out, grad_hn, grad_cn, saved, keys, x, w_in, opt(keep), w_rec,
                                     opt(b_ih),
                                     opt(in_mask), opt(qkv_w), opt(out_w), opt(comm_mask));
  });
  return result;
}

// The composed input weight of every unit side by side, W_v @ W_ih[k] for each k:
// value_w (D, V), w_ih (K, V, G) -> (D, K*G). Per call with autograd, so in the op's
// matmuls (ATen's, with the transposes and copies of a batched product, took 0.6 ms of a
// 7 ms RL training batch).
Tensor compose_forward(const Tensor& value_w, const Tensor& w_ih) {
  check_inputs({value_w, w_ih}, value_w);
  const int64_t D = value_w.size(0), V = value_w.size(1), K = w_ih.size(0), G = w_ih.size(2);
  TORCH_CHECK(w_ih.dim() == 3 && w_ih.size(1) == V, "rim_layer: w_ih must be (K, ", V, ", G), got ", w_ih.sizes());
  Tensor out = at::empty({D, K * G}, value_w.options());
  OneBlasThread one_thread;
  AT_DISPATCH_FLOATING_TYPES(value_w.scalar_type(), "compose_forward", [&] {
    for (int64_t k = 0; k < K; ++k) {
      mm_ld<scalar_t>(false, D, G, V, value_w.data_ptr<scalar_t>(), V, w_ih.data_ptr<scalar_t>() + k * V * G, G, false,
                      out.data_ptr<scalar_t>() + k * G, K * G);
    }
  });
  return out;
}

// Its gradients: d value_w = sum_k dC[:, k] @ W_ih[k]^T, d w_ih[k] = W_v^T @ dC[:, k].
std::vector<Tensor> compose_backward(const Tensor& grad, const Tensor& value_w, const Tensor& w_ih) {
  check_inputs({grad, value_w, w_ih}, value_w);
  const int64_t D = value_w.size(0), V = value_w.size(1), K = w_ih.size(0), G = w_ih.size(2);
  const Tensor w_ih_t = w_ih.transpose(1, 2).contiguous();  // (K, G, V)
  Tensor d_value = at::empty({D, V}, value_w.options());
  Tensor d_w_ih = at::empty({K, V, G}, value_w.options());
  OneBlasThread one_thread;
  AT_DISPATCH_FLOATING_TYPES(value_w.scalar_type(), "compose_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    for (int64_t k = 0; k < K; ++k) {
      mm_ld<scalar_t>(false, D, V, G, g + k * G, K * G, w_ih_t.data_ptr<scalar_t>() + k * G * V, V, k > 0,
                      d_value.data_ptr<scalar_t>(), V);
      mm_ld<scalar_t>(true, V, G, D, value_w.data_ptr<scalar_t>(), V, g + k * G, K * G, false,
                      d_w_ih.data_ptr<scalar_t>() + k * V * G, G);
    }
  });
  return {d_value, d_w_ih};
}

bool has_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

int64_t empty_cache() { return static_cast<int64_t>(BlockCache::instance().empty()); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rim_layer_forward, "one RIM layer over a sequence (CPU)");
  m.def("backward", &rim_layer_backward, "its gradients");
  m.def("compose_forward", &compose_forward, "each unit's composed input weight, side by side");
  m.def("compose_backward", &compose_backward, "its gradients");
  m.def("has_blas", &has_blas, "whether libtorch exports sgemm_/dgemm_");
  m.def("empty_cache", &empty_cache, "free the cached saved-buffer blocks; returns the bytes freed");
}
