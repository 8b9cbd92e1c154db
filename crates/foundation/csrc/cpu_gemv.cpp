// Matrix-vector products for decoding on a CPU, behind a C ABI: `y = x W^T` for a few rows of `x`
// (one per sequence while decoding) and a weight `W` `[n, k]` held as bf16, f16 or f32, as int8
// codes with one scale per row, or as int4 codes with a scale and a minimum per group of inputs;
// and, for a prompt's many rows, libtorch's f32 GEMM on blocks of such a weight widened to f32.
//
// Decoding one token reads every weight once, so at batch 1 the speed is how close the weights
// stream at the memory's bandwidth. libtorch's kernels for these shapes reach about half of it on
// the machines we measured (docs/benchmarks.md); these walk four weight rows at a time with wide
// loads, widen 16-bit weights to f32 in registers and accumulate in f32, split the rows over
// libtorch's threads, and pick their instructions by what the CPU has (checked once, at run time):
// AVX-512 (with VNNI for int8 and int4), AVX2 with FMA and F16C, or plain C++ anywhere else.
//
// Int8 weights meet activations quantized as llama.cpp's Q8_0 does (blocks of 32, one f32 scale
// each, symmetric), so one VNNI instruction multiplies and sums 64 weight codes; the result is
// the block sums scaled by the activations' and the row's scales. Int4 weights (`w = q s + m`,
// q in 0..15, as llama.cpp's Q4_1) meet signed Q8_0 activations the same way: the codes are the
// unsigned operand, and the minimums multiply each group's sum of activations. Without VNNI, AVX2's
// `vpmaddubsw` does the same 32 codes at a time.
//
// Int4 layout: codes `[n, k / 2]` bytes, each 32 inputs of a row in 16 bytes, byte b holding
// input b in its low nibble and input 16 + b in its high one (llama.cpp's Q4_0 and Q4_1 blocks);
// scales and minimums `[n, k / group]` bf16.
//
// Tensors cross as tch's `at::Tensor *`; every function returns NULL on success or a malloc'd
// message (free it with `llava_gemv_free_message`).

#pragma GCC optimize("O3")
// GCC 12's AVX-512 conversion intrinsics start from an "undefined" register it then reports as
// maybe uninitialized: a false alarm in its own headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <llava_ffi.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// What the CPU can run, best first.
enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3 };

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl");
    if (avx512 && __builtin_cpu_supports("avx512vnni")) return kAvx512Vnni;
    if (avx512) return kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return kAvx2;
#endif
    return kScalar;
}

Isa isa() {
    static const Isa found = [] {
        // LLAVA_CPU_ISA=scalar|avx2|avx512 caps what is used (tests of each path, comparisons).
        Isa best = detect();
        if (const char *cap = std::getenv("LLAVA_CPU_ISA")) {
            Isa want = best;
            if (!std::strcmp(cap, "scalar")) want = kScalar;
            else if (!std::strcmp(cap, "avx2")) want = kAvx2;
            else if (!std::strcmp(cap, "avx512")) want = kAvx512;
            best = std::min(best, want);
        }
        return best;
    }();
    return found;
}

// Weight element types the dense kernel reads.
enum Dtype : int { kBf16 = 0, kF16 = 1, kF32 = 2 };

inline float scalar_load(const void *w, int64_t i, Dtype t) {
    switch (t) {
        case kBf16: {
            uint32_t bits = uint32_t(static_cast<const uint16_t *>(w)[i]) << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            return f;
        }
        case kF16:
            return float(static_cast<const c10::Half *>(w)[i]);
        default:
            return static_cast<const float *>(w)[i];
    }
}

// The kernels walk a few weight rows at a time, and a row is short (1-4 KiB at k = 2048) while
// the hardware prefetcher stops at page ends: each inner step also asks for the same place this
// many rows ahead. On the Xeon of docs/benchmarks.md this took Gemma's tied head (too big for
// the cache) from 28 to 16 ms in int4, 31 to 23 in int8 and 50 to 44 in bf16.
constexpr int64_t kPrefetchRows = 4;

// Asks for the cache line holding element i of a weight of type t.
inline void prefetch_row(const void *w, int64_t i, Dtype t) {
    const char *p = static_cast<const char *>(w) + i * (t == kF32 ? 4 : 2);
    _mm_prefetch(p, _MM_HINT_T0);
}

// ---- dense: rows [r0, r1) of W against m rows of x (f32, [m, k]); y is [m, n] f32 ----

void dense_scalar(const void *w, Dtype t, const float *x, float *y, int64_t m, int64_t n,
                  int64_t k, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t i = 0; i < m; ++i) {
            float acc = 0.f;
            for (int64_t j = 0; j < k; ++j) acc += scalar_load(w, r * k + j, t) * x[i * k + j];
            y[i * n + r] = acc;
        }
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const void *w, int64_t i, Dtype t) {
    switch (t) {
        case kBf16: {
            __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(
                static_cast<const uint16_t *>(w) + i));
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
        case kF16: {
            __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(
                static_cast<const uint16_t *>(w) + i));
            return _mm256_cvtph_ps(h);
        }
        default:
            return _mm256_loadu_ps(static_cast<const float *>(w) + i);
    }
}

__attribute__((target("avx2,fma,f16c"))) inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <Dtype T>
__attribute__((target("avx2,fma,f16c"))) void dense_avx2(const void *w, const float *x, float *y,
                                                         int64_t m, int64_t n, int64_t k,
                                                         int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        for (int64_t i = 0; i < m; ++i) {
            const float *xi = x + i * k;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t j = 0;
            for (; j + 8 <= k; j += 8) {
                __m256 xv = _mm256_loadu_ps(xi + j);
                for (int q = 0; q < 4; ++q) prefetch_row(w, (r + q + kPrefetchRows) * k + j, T);
                a0 = _mm256_fmadd_ps(load8(w, (r + 0) * k + j, T), xv, a0);
                a1 = _mm256_fmadd_ps(load8(w, (r + 1) * k + j, T), xv, a1);
                a2 = _mm256_fmadd_ps(load8(w, (r + 2) * k + j, T), xv, a2);
                a3 = _mm256_fmadd_ps(load8(w, (r + 3) * k + j, T), xv, a3);
            }
            float s[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
            for (; j < k; ++j)
                for (int q = 0; q < 4; ++q) s[q] += scalar_load(w, (r + q) * k + j, T) * xi[j];
            for (int q = 0; q < 4; ++q) y[i * n + r + q] = s[q];
        }
    }
    dense_scalar(w, T, x, y, m, n, k, r, r1);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const void *w,
                                                                           int64_t i, Dtype t) {
    switch (t) {
        case kBf16: {
            __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(
                static_cast<const uint16_t *>(w) + i));
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        case kF16: {
            __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(
                static_cast<const uint16_t *>(w) + i));
            return _mm512_cvtph_ps(h);
        }
        default:
            return _mm512_loadu_ps(static_cast<const float *>(w) + i);
    }
}

template <Dtype T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dense_avx512(const void *w,
                                                                        const float *x, float *y,
                                                                        int64_t m, int64_t n,
                                                                        int64_t k, int64_t r0,
                                                                        int64_t r1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        for (int64_t i = 0; i < m; ++i) {
            const float *xi = x + i * k;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t j = 0;
            for (; j + 16 <= k; j += 16) {
                __m512 xv = _mm512_loadu_ps(xi + j);
                for (int q = 0; q < 4; ++q) prefetch_row(w, (r + q + kPrefetchRows) * k + j, T);
                a0 = _mm512_fmadd_ps(load16(w, (r + 0) * k + j, T), xv, a0);
                a1 = _mm512_fmadd_ps(load16(w, (r + 1) * k + j, T), xv, a1);
                a2 = _mm512_fmadd_ps(load16(w, (r + 2) * k + j, T), xv, a2);
                a3 = _mm512_fmadd_ps(load16(w, (r + 3) * k + j, T), xv, a3);
            }
            float s[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1),
                          _mm512_reduce_add_ps(a2), _mm512_reduce_add_ps(a3)};
            for (; j < k; ++j)
                for (int q = 0; q < 4; ++q) s[q] += scalar_load(w, (r + q) * k + j, T) * xi[j];
            for (int q = 0; q < 4; ++q) y[i * n + r + q] = s[q];
        }
    }
    dense_scalar(w, T, x, y, m, n, k, r, r1);
}
#endif

using DenseFn = void (*)(const void *, const float *, float *, int64_t, int64_t, int64_t, int64_t,
                         int64_t);

template <Dtype T>
void dense_scalar_t(const void *w, const float *x, float *y, int64_t m, int64_t n, int64_t k,
                    int64_t r0, int64_t r1) {
    dense_scalar(w, T, x, y, m, n, k, r0, r1);
}

template <Dtype T>
DenseFn dense_fn(Isa level) {
#if defined(__x86_64__)
    if (level >= kAvx512) return dense_avx512<T>;
    if (level >= kAvx2) return dense_avx2<T>;
#endif
    return dense_scalar_t<T>;
}

// Rows per task: enough weight bytes (about 256 KiB) that splitting pays, a multiple of 4.
int64_t grain_rows(int64_t k, int64_t bytes_per_weight) {
    int64_t rows = (int64_t(256) << 10) / std::max<int64_t>(1, k * bytes_per_weight);
    return std::max<int64_t>(4, (rows + 3) / 4 * 4);
}

// ---- widening a block of 16-bit weight rows to f32 (for prompts: see llava_gemm_widened) ----

void widen_scalar(const void *w, Dtype t, float *out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = scalar_load(w, i, t);
}

#if defined(__x86_64__)
template <Dtype T>
__attribute__((target("avx2,fma,f16c"))) void widen_avx2(const void *w, float *out,
                                                        int64_t count) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, load8(w, i, T));
    for (; i < count; ++i) out[i] = scalar_load(w, i, T);
}

template <Dtype T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void widen_avx512(const void *w, float *out,
                                                                        int64_t count) {
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, load16(w, i, T));
    for (; i < count; ++i) out[i] = scalar_load(w, i, T);
}
#endif

// `count` weights of type `t` from `w` as f32 into `out`.
void widen(const void *w, Dtype t, float *out, int64_t count, Isa level) {
#if defined(__x86_64__)
    if (level >= kAvx512) {
        if (t == kBf16) return widen_avx512<kBf16>(w, out, count);
        if (t == kF16) return widen_avx512<kF16>(w, out, count);
    } else if (level >= kAvx2) {
        if (t == kBf16) return widen_avx2<kBf16>(w, out, count);
        if (t == kF16) return widen_avx2<kF16>(w, out, count);
    }
#endif
    widen_scalar(w, t, out, count);
}

// ---- int8 and int4 rows widened to f32 ----

#if defined(__x86_64__)
// One int8 row times `s` into `dst`; returns how many inputs it did (the rest: scalar).
__attribute__((target("avx512f,avx512bw,avx512vl"))) int64_t widen_int8_avx512(
    const int8_t *src, float s, float *dst, int64_t k) {
    __m512 sv = _mm512_set1_ps(s);
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i *>(src + j));
        _mm512_storeu_ps(dst + j, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), sv));
    }
    return j;
}

__attribute__((target("avx2,fma,f16c"))) int64_t widen_int8_avx2(const int8_t *src, float s,
                                                                 float *dst, int64_t k) {
    __m256 sv = _mm256_set1_ps(s);
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(src + j));
        _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), sv));
    }
    return j;
}
#endif

// Int8 rows [r0, r0 + rows) of `q` times their scales, as f32 into `out` [rows, k].
void widen_int8(const int8_t *q, const float *scales, int64_t k, int64_t r0, int64_t rows,
                float *out, Isa level) {
    for (int64_t r = r0; r < r0 + rows; ++r) {
        const int8_t *src = q + r * k;
        float *dst = out + (r - r0) * k;
        int64_t j = 0;
#if defined(__x86_64__)
        if (level >= kAvx512) j = widen_int8_avx512(src, scales[r], dst, k);
        else if (level >= kAvx2) j = widen_int8_avx2(src, scales[r], dst, k);
#endif
        for (; j < k; ++j) dst[j] = float(src[j]) * scales[r];
    }
}

inline float bf16_to_float(uint16_t h) {
    uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// The int4 code of input j of a row whose codes start at `row` (see the layout above).
inline int int4_code(const uint8_t *row, int64_t j) {
    uint8_t byte = row[j / 32 * 16 + j % 16];
    return (j % 32) < 16 ? byte & 15 : byte >> 4;
}

// An int4 weight: codes, bf16 scales and minimums, inputs per group.
struct Int4 {
    const uint8_t *codes;
    const uint16_t *scales;
    const uint16_t *mins;
    int64_t k, group;
};

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl"))) void widen_int4_row_avx512(
    const uint8_t *codes, const uint16_t *s, const uint16_t *m, int64_t k, int64_t group,
    float *dst) {
    const __m128i low = _mm_set1_epi8(15);
    for (int64_t b = 0; b < k / 32; ++b) {
        __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes + 16 * b));
        int64_t g = 32 * b / group;
        __m512 sv = _mm512_set1_ps(bf16_to_float(s[g])), mv = _mm512_set1_ps(bf16_to_float(m[g]));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(bytes, low)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), low)));
        _mm512_storeu_ps(dst + 32 * b, _mm512_fmadd_ps(lo, sv, mv));
        _mm512_storeu_ps(dst + 32 * b + 16, _mm512_fmadd_ps(hi, sv, mv));
    }
}

__attribute__((target("avx2,fma,f16c"))) void widen_int4_row_avx2(const uint8_t *codes,
                                                                  const uint16_t *s,
                                                                  const uint16_t *m, int64_t k,
                                                                  int64_t group, float *dst) {
    const __m128i low = _mm_set1_epi8(15);
    for (int64_t b = 0; b < k / 32; ++b) {
        __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes + 16 * b));
        int64_t g = 32 * b / group;
        __m256 sv = _mm256_set1_ps(bf16_to_float(s[g])), mv = _mm256_set1_ps(bf16_to_float(m[g]));
        // Inputs 0..15 in the low nibbles, 16..31 in the high ones, 8 at a time.
        __m128i nibbles[2] = {_mm_and_si128(bytes, low), _mm_and_si128(_mm_srli_epi16(bytes, 4), low)};
        for (int h = 0; h < 2; ++h)
            for (int e = 0; e < 2; ++e) {
                __m128i eight = e ? _mm_srli_si128(nibbles[h], 8) : nibbles[h];
                __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eight));
                _mm256_storeu_ps(dst + 32 * b + 16 * h + 8 * e, _mm256_fmadd_ps(q, sv, mv));
            }
    }
}
#endif

// Int4 rows [r0, r0 + rows) as f32 (q s + m) into `out` [rows, k]; k a multiple of 32.
void widen_int4(const Int4 &w, int64_t r0, int64_t rows, float *out, Isa level) {
    int64_t k = w.k, groups = k / w.group;
    for (int64_t r = r0; r < r0 + rows; ++r) {
        const uint8_t *codes = w.codes + r * (k / 2);
        const uint16_t *s = w.scales + r * groups, *m = w.mins + r * groups;
        float *dst = out + (r - r0) * k;
#if defined(__x86_64__)
        if (level >= kAvx512) {
            widen_int4_row_avx512(codes, s, m, k, w.group, dst);
            continue;
        }
        if (level >= kAvx2) {
            widen_int4_row_avx2(codes, s, m, k, w.group, dst);
            continue;
        }
#endif
        for (int64_t j = 0; j < k; ++j) {
            int64_t g = j / w.group;
            dst[j] = float(int4_code(codes, j)) * bf16_to_float(s[g]) + bf16_to_float(m[g]);
        }
    }
}

// y = x W^T for x [m, k] f32 by libtorch's f32 GEMM on blocks of W's rows widened to f32 by
// `widen_rows(r0, rows, dst)` (about 8 MiB of f32 a block, so it stays in cache and no whole f32
// matrix is made). Returns y [m, n] f32.
template <class WidenRows>
at::Tensor gemm_by_blocks(const at::Tensor &x, int64_t n, int64_t k, WidenRows widen_rows) {
    int64_t m = x.size(0);
    int64_t block =
        std::max<int64_t>(16, ((int64_t(8) << 20) / std::max<int64_t>(1, 4 * k)) / 16 * 16);
    block = std::min(block, n);
    // y^T, so each block's product lands in contiguous rows.
    at::Tensor yt = at::empty({n, m}, x.options());
    at::Tensor wf = at::empty({block, k}, x.options());
    at::Tensor xt = x.t();
    for (int64_t r0 = 0; r0 < n; r0 += block) {
        int64_t rows = std::min(block, n - r0);
        float *dst = wf.data_ptr<float>();
        at::parallel_for(0, rows, 16,
                         [&](int64_t a, int64_t b) { widen_rows(r0 + a, b - a, dst + a * k); });
        at::Tensor slice = yt.narrow(0, r0, rows);
        at::mm_out(slice, wf.narrow(0, 0, rows), xt);
    }
    return yt.t().contiguous();
}

// ---- int8 codes, one scale per row ----

// Activations of one row as Q8_0: |q| as bytes, the signs as bits (one per element), one scale
// per block of 32 spread over 8 lanes each (so one 16-lane vector holds two blocks' scales).
struct Q8Row {
    std::vector<uint8_t> abs;
    std::vector<uint64_t> negative;
    std::vector<float> scales;
};

// One block of 32 activations as Q8_0: its codes into `out`, its scale returned.
float quantize_block(const float *x, int8_t *out) {
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    float d = amax / 127.f;
    float inv = d > 0.f ? 1.f / d : 0.f;
    for (int j = 0; j < 32; ++j) out[j] = int8_t(std::clamp(int(std::nearbyint(x[j] * inv)), -127, 127));
    return d;
}

Q8Row quantize_row(const float *x, int64_t k) {
    Q8Row q;
    q.abs.resize(k);
    q.negative.assign(k / 64, 0);
    q.scales.resize(k / 4);
    int8_t codes[32];
    for (int64_t b = 0; b < k / 32; ++b) {
        float d = quantize_block(x + b * 32, codes);
        for (int j = 0; j < 32; ++j) {
            int64_t e = b * 32 + j;
            q.abs[e] = uint8_t(codes[j] < 0 ? -codes[j] : codes[j]);
            if (codes[j] < 0) q.negative[e / 64] |= uint64_t(1) << (e % 64);
        }
        for (int l = 0; l < 8; ++l) q.scales[b * 8 + l] = d;
    }
    return q;
}

// Activations of one row as signed Q8_0 for int4 weights. The int4 kernel takes 128 inputs (four
// blocks, 64 bytes of codes) at a time: their low nibbles are the first half of each block, their
// high nibbles the second. So each whole 128 inputs are stored as the first halves of the four
// blocks (64 codes), then the second halves; one dot product instruction on each leaves block b's
// sums in lanes 4b..4b+3, and `scales` holds each block's scale over those four lanes. Inputs past
// the last whole 128 stay in input order (their blocks' scales in `block_scales`, which holds
// every block's). `group_sums`: each group's sum of the quantized activations, which the group's
// minimum multiplies.
struct Q8Signed {
    std::vector<int8_t> codes;
    std::vector<float> scales;
    std::vector<float> block_scales;
    std::vector<float> group_sums;
};

// Where Q8Signed's order puts input j of a row of k.
inline int64_t kernel_order(int64_t j, int64_t k) {
    if (j >= k / 128 * 128) return j;
    int64_t o = j % 128, block = o / 32, half = o % 32 / 16;
    return j / 128 * 128 + half * 64 + block * 16 + o % 16;
}

Q8Signed quantize_row_signed(const float *x, int64_t k, int64_t group) {
    Q8Signed q;
    q.codes.resize(k);
    q.scales.resize(k / 128 * 16);
    q.block_scales.resize(k / 32);
    q.group_sums.assign(k / group, 0.f);
    int8_t codes[32];
    for (int64_t b = 0; b < k / 32; ++b) {
        float d = quantize_block(x + b * 32, codes);
        int32_t sum = 0;
        for (int j = 0; j < 32; ++j) {
            q.codes[kernel_order(b * 32 + j, k)] = codes[j];
            sum += codes[j];
        }
        q.group_sums[b * 32 / group] += d * float(sum);
        q.block_scales[b] = d;
        if (b < k / 128 * 4)
            for (int l = 0; l < 4; ++l) q.scales[b * 4 + l] = d;
    }
    return q;
}

void int8_scalar(const int8_t *w, const float *scales, const float *x, float *y, int64_t m,
                 int64_t n, int64_t k, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < m; ++i) {
            float acc = 0.f;
            for (int64_t j = 0; j < k; ++j) acc += float(w[r * k + j]) * x[i * k + j];
            y[i * n + r] = acc * scales[r];
        }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) void int8_avx2(const int8_t *w, const float *scales,
                                                   const float *x, float *y, int64_t m,
                                                   int64_t n, int64_t k, int64_t r0,
                                                   int64_t r1) {
    int64_t r = r0;
    for (; r + 4 <= r1 && k % 8 == 0; r += 4)
        for (int64_t i = 0; i < m; ++i) {
            const float *xi = x + i * k;
            __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                           _mm256_setzero_ps()};
            for (int64_t j = 0; j < k; j += 8) {
                __m256 xv = _mm256_loadu_ps(xi + j);
                for (int q = 0; q < 4; ++q) {
                    __m128i c = _mm_loadl_epi64(
                        reinterpret_cast<const __m128i *>(w + (r + q) * k + j));
                    a[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), xv, a[q]);
                }
            }
            for (int q = 0; q < 4; ++q) y[i * n + r + q] = hsum8(a[q]) * scales[r + q];
        }
    int8_scalar(w, scales, x, y, m, n, k, r, r1);
}

// k a multiple of 64; `xs` holds each row of x as Q8_0.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int8_vnni(
    const int8_t *w, const float *scales, const std::vector<Q8Row> &xs, float *y, int64_t m,
    int64_t n, int64_t k, int64_t r0, int64_t r1) {
    const __m512i zero = _mm512_setzero_si512();
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        for (int64_t i = 0; i < m; ++i) {
            const Q8Row &xq = xs[i];
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t j = 0; j < k; j += 64) {
                __m512i xa = _mm512_loadu_si512(xq.abs.data() + j);
                __mmask64 neg = xq.negative[j / 64];
                __m512 d = _mm512_loadu_ps(xq.scales.data() + j / 4);
                // Codes times the sign of x, so |x| (unsigned) times them is x times the codes.
#define LLAVA_ROW(acc, q)                                                                      \
    {                                                                                          \
        _mm_prefetch(reinterpret_cast<const char *>(w + (r + q + kPrefetchRows) * k + j), _MM_HINT_T0); \
        __m512i c = _mm512_loadu_si512(w + (r + q) * k + j);                                   \
        c = _mm512_mask_sub_epi8(c, neg, zero, c);                                             \
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xa, c)), d, acc); \
    }
                LLAVA_ROW(a0, 0)
                LLAVA_ROW(a1, 1)
                LLAVA_ROW(a2, 2)
                LLAVA_ROW(a3, 3)
#undef LLAVA_ROW
            }
            y[i * n + r + 0] = _mm512_reduce_add_ps(a0) * scales[r + 0];
            y[i * n + r + 1] = _mm512_reduce_add_ps(a1) * scales[r + 1];
            y[i * n + r + 2] = _mm512_reduce_add_ps(a2) * scales[r + 2];
            y[i * n + r + 3] = _mm512_reduce_add_ps(a3) * scales[r + 3];
        }
    // The last rows (fewer than 4) by the same arithmetic.
    for (; r < r1; ++r)
        for (int64_t i = 0; i < m; ++i) {
            const Q8Row &xq = xs[i];
            float acc = 0.f;
            for (int64_t b = 0; b < k / 32; ++b) {
                int32_t sum = 0;
                for (int j = 0; j < 32; ++j) {
                    int64_t e = b * 32 + j;
                    int v = xq.abs[e];
                    if (xq.negative[e / 64] >> (e % 64) & 1) v = -v;
                    sum += v * w[r * k + e];
                }
                acc += float(sum) * xq.scales[b * 8];
            }
            y[i * n + r] = acc * scales[r];
        }
}

// Row `row` of an int4 weight against one row of x as signed Q8_0, given `acc`, the lanes its
// whole 128-input steps summed: each group's minimum times the group's sum of activations into
// the same lanes, the lanes summed, then the blocks past the last whole 128 inputs in input order.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) float int4_vnni_finish(
    const Int4 &w, const Q8Signed &xq, int64_t row, __m512 acc) {
    const int64_t k = w.k, groups = k / w.group, steps = k / 128;
    const uint16_t *mins = w.mins + row * groups;
    int64_t g = 0;
    for (; g + 16 <= groups; g += 16) {
        __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(mins + g));
        __m512 mv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        acc = _mm512_fmadd_ps(mv, _mm512_loadu_ps(xq.group_sums.data() + g), acc);
    }
    float total = _mm512_reduce_add_ps(acc);
    for (; g < groups; ++g) total += bf16_to_float(mins[g]) * xq.group_sums[g];
    const uint8_t *codes = w.codes + row * (k / 2);
    for (int64_t b = steps * 4; b < k / 32; ++b) {
        int32_t sum = 0;
        for (int64_t j = 32 * b; j < 32 * b + 32; ++j) sum += int4_code(codes, j) * xq.codes[j];
        total += float(sum) * xq.block_scales[b] * bf16_to_float(w.scales[row * groups + 32 * b / w.group]);
    }
    return total;
}

// R rows of an int4 weight from r against X rows of x from i0, as signed Q8_0 (see Q8Signed):
// 128 inputs (64 bytes of codes) a step, which spans S groups' scales (4 for groups of 32, 2 for
// 64, else 1). Each step's codes are unpacked once for the X rows, so a prompt's rows share the
// unpacking and the weight rows stay in L1 while they pass.
template <int R, int S, int X>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int4_vnni_tile(
    const Int4 &w, const std::vector<Q8Signed> &xs, float *y, int64_t n, int64_t r, int64_t i0) {
    const int64_t k = w.k, groups = k / w.group, steps = k / 128;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i nibble = _mm512_set1_epi8(15);
    // The step's scales as lanes: block b's (lanes 4b..4b+3) is scale b * 32 / group of the
    // step's first. Each f32 lane takes its bf16 into its high word (vpermw), the low one zeroed.
    alignas(64) int16_t pick_words[32];
    for (int l = 0; l < 16; ++l) {
        pick_words[2 * l] = 0;
        pick_words[2 * l + 1] = int16_t(l / 4 * 32 / std::min<int64_t>(w.group, 128));
    }
    const __m512i pick = _mm512_load_si512(pick_words);
    __m512 acc[R][X];
    for (int q = 0; q < R; ++q)
        for (int j = 0; j < X; ++j) acc[q][j] = _mm512_setzero_ps();
    for (int64_t t = 0; t < steps; ++t) {
        __m512i x_first[X], x_second[X];
        for (int j = 0; j < X; ++j) {
            x_first[j] = _mm512_loadu_si512(xs[i0 + j].codes.data() + 128 * t);
            x_second[j] = _mm512_loadu_si512(xs[i0 + j].codes.data() + 128 * t + 64);
        }
        int64_t g = 128 * t / w.group;
        for (int q = 0; q < R; ++q) {
            const uint8_t *row = w.codes + (r + q) * (k / 2);
            _mm_prefetch(reinterpret_cast<const char *>(row + kPrefetchRows * (k / 2) + 64 * t),
                         _MM_HINT_T0);
            __m512i bytes = _mm512_loadu_si512(row + 64 * t);
            __m512i low = _mm512_and_si512(bytes, nibble);
            __m512i high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), nibble);
            int64_t words = 0;
            std::memcpy(&words, w.scales + (r + q) * groups + g, 2 * S);
            __m512 sv = _mm512_castsi512_ps(
                _mm512_maskz_permutexvar_epi16(0xAAAAAAAA, pick, _mm512_set1_epi64(words)));
            for (int j = 0; j < X; ++j) {
                __m512i dot = _mm512_dpbusd_epi32(zero, low, x_first[j]);
                dot = _mm512_dpbusd_epi32(dot, high, x_second[j]);
                __m512 d = _mm512_loadu_ps(xs[i0 + j].scales.data() + 16 * t);
                acc[q][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, sv), acc[q][j]);
            }
        }
    }
    for (int q = 0; q < R; ++q)
        for (int j = 0; j < X; ++j)
            y[(i0 + j) * n + r + q] = int4_vnni_finish(w, xs[i0 + j], r + q, acc[q][j]);
}

// Rows r0..r1 of an int4 weight against the m rows of x, as signed Q8_0: tiles of 4 weight rows
// by 4 rows of x.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int4_vnni(
    const Int4 &w, const std::vector<Q8Signed> &xs, float *y, int64_t m, int64_t n, int64_t r0,
    int64_t r1) {
    auto rows = [&](auto s) {
        constexpr int S = decltype(s)::value;
        auto tile = [&](auto rr, int64_t r) {
            constexpr int R = decltype(rr)::value;
            int64_t i = 0;
            for (; i + 4 <= m; i += 4) int4_vnni_tile<R, S, 4>(w, xs, y, n, r, i);
            switch (m - i) {
            case 3: int4_vnni_tile<R, S, 3>(w, xs, y, n, r, i); break;
            case 2: int4_vnni_tile<R, S, 2>(w, xs, y, n, r, i); break;
            case 1: int4_vnni_tile<R, S, 1>(w, xs, y, n, r, i); break;
            default: break;
            }
        };
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) tile(std::integral_constant<int, 4>(), r);
        for (; r < r1; ++r) tile(std::integral_constant<int, 1>(), r);
    };
    if (w.group == 32) rows(std::integral_constant<int, 4>());
    else if (w.group == 64) rows(std::integral_constant<int, 2>());
    else rows(std::integral_constant<int, 1>());
}

// ---- int8 and int4 weights against a prompt's many rows: an integer GEMM ----
//
// The weight goes 16 rows at a time (a panel) into the lanes of a vector: each 4 consecutive
// inputs of row r + l sit in lane l as bytes, so one `vpdpbusd` multiplies 4 inputs of 16 rows by
// the same 4 activations (broadcast) and sums them per row. A block of 32 inputs is 8 such
// instructions per row of x; its int32 sums are converted once and scaled by the activations'
// block scale (times the 16 rows' group scales for int4). Per 512 multiply-adds a row of x takes
// about 11 vector instructions, against 32 FMAs for libtorch's f32 GEMM on the dequantized
// weight, and the panel is unpacked once for all the rows of x.
//
// `vpdpbusd` multiplies unsigned bytes by signed ones. Int4 codes (0..15) are the unsigned
// operand and the activations' Q8_0 codes the signed one; the minimums meet each group's sum of
// activations at the end. Int8 codes are signed, so there the activations go unsigned, offset by
// 128, and each block's sums start from -128 times the block's sum of weight codes.

// A prompt's rows of x as Q8_0 in input order: codes [m, k] (offset by 128 as unsigned bytes when
// `offset`), one scale per block of 32 [m, k / 32], and each group's sum of scale times codes
// [m, k / group].
struct Q8Prompt {
    std::vector<int8_t> codes;
    std::vector<float> scales;
    std::vector<float> group_sums;
};

Q8Prompt quantize_prompt(const float *x, int64_t m, int64_t k, int64_t group, bool offset) {
    Q8Prompt q;
    const int64_t blocks = k / 32, groups = k / group;
    q.codes.resize(m * k);
    q.scales.resize(m * blocks);
    q.group_sums.assign(m * groups, 0.f);
    at::parallel_for(0, m, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
            for (int64_t b = 0; b < blocks; ++b) {
                int8_t *codes = q.codes.data() + i * k + 32 * b;
                float d = quantize_block(x + i * k + 32 * b, codes);
                int32_t sum = 0;
                for (int j = 0; j < 32; ++j) sum += codes[j];
                if (offset)
                    for (int j = 0; j < 32; ++j) codes[j] = int8_t(uint8_t(codes[j]) ^ 0x80);
                q.scales[i * blocks + b] = d;
                q.group_sums[i * groups + 32 * b / group] += d * float(sum);
            }
    });
    return q;
}

// 16 weight rows from r (fewer at the end: the missing lanes hold zeros) as the GEMM reads them:
// `codes` [k / 4][16] 4-byte lanes; int4: `scales` and `mins` [groups][16] f32; int8: `scales`
// [16] f32 and `start` [k / 32][16], each block's -128 times its sum of codes.
struct Panel {
    std::vector<uint8_t> rows;  // int4: [16, k], one code a byte, before the transpose
    std::vector<int32_t> codes, start;
    std::vector<float> scales, mins;
};

// Lane l of step s = bytes 4s..4s+3 of row l, for the first `lanes` rows of `rows` (one every
// `stride` bytes); the other lanes zero.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void transpose_panel(const uint8_t *rows,
                                                                         int64_t stride, int64_t k,
                                                                         int lanes, int32_t *out) {
    const __m512i offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(int32_t(stride)));
    const __mmask16 valid = __mmask16((1u << lanes) - 1);
    for (int64_t s = 0; s < k / 4; ++s)
        _mm512_storeu_si512(out + 16 * s, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid,
                                                                      offsets, rows + 4 * s, 1));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void int4_panel(const Int4 &w, int64_t r,
                                                                     int lanes, Panel &p) {
    const int64_t k = w.k, groups = k / w.group;
    const __m128i nibble = _mm_set1_epi8(15);
    p.rows.resize(16 * k);
    p.codes.resize(k / 4 * 16);
    p.scales.assign(groups * 16, 0.f);
    p.mins.assign(groups * 16, 0.f);
    for (int l = 0; l < lanes; ++l) {
        const uint8_t *src = w.codes + (r + l) * (k / 2);
        uint8_t *dst = p.rows.data() + l * k;
        for (int64_t b = 0; b < k / 32; ++b) {
            __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(src + 16 * b));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 32 * b), _mm_and_si128(bytes, nibble));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 32 * b + 16),
                             _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble));
        }
        for (int64_t g = 0; g < groups; ++g) {
            p.scales[g * 16 + l] = bf16_to_float(w.scales[(r + l) * groups + g]);
            p.mins[g * 16 + l] = bf16_to_float(w.mins[(r + l) * groups + g]);
        }
    }
    transpose_panel(p.rows.data(), k, k, lanes, p.codes.data());
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void int8_panel(const int8_t *q,
                                                                     const float *scales,
                                                                     int64_t k, int64_t r,
                                                                     int lanes, Panel &p) {
    p.codes.resize(k / 4 * 16);
    p.start.assign(k / 32 * 16, 0);
    p.scales.assign(16, 0.f);
    const int8_t *first = q + r * k;
    transpose_panel(reinterpret_cast<const uint8_t *>(first), k, k, lanes, p.codes.data());
    for (int l = 0; l < lanes; ++l) {
        p.scales[l] = scales[r + l];
        for (int64_t b = 0; b < k / 32; ++b) {
            int32_t sum = 0;
            for (int j = 0; j < 32; ++j) sum += first[l * k + 32 * b + j];
            p.start[b * 16 + l] = -128 * sum;
        }
    }
}

// X rows of x from i0 against a panel (weight rows r.., `lanes` of them): y[i, r + l].
template <int X, bool kInt8>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void gemm_tile(
    const Panel &p, const Q8Prompt &xq, int64_t k, int64_t group, int64_t i0, float *y, int64_t n,
    int64_t r, int lanes) {
    const int64_t blocks = k / 32, groups = k / group;
    __m512 acc[X];
    for (int j = 0; j < X; ++j) acc[j] = _mm512_setzero_ps();
    const int8_t *xc = xq.codes.data() + i0 * k;
    const float *xd = xq.scales.data() + i0 * blocks;
    for (int64_t b = 0; b < blocks; ++b) {
        const int32_t *wb = p.codes.data() + b * 128;
        __m512i wv[8];
        for (int t = 0; t < 8; ++t) wv[t] = _mm512_loadu_si512(wb + 16 * t);
        __m512i start = kInt8 ? _mm512_loadu_si512(p.start.data() + 16 * b) : _mm512_setzero_si512();
        __m512 sw = kInt8 ? _mm512_setzero_ps() : _mm512_loadu_ps(p.scales.data() + 32 * b / group * 16);
        for (int j = 0; j < X; ++j) {
            const int8_t *xb = xc + j * k + 32 * b;
            __m512i dot = start;
            for (int t = 0; t < 8; ++t) {
                int32_t four;
                std::memcpy(&four, xb + 4 * t, 4);
                __m512i xv = _mm512_set1_epi32(four);
                dot = kInt8 ? _mm512_dpbusd_epi32(dot, xv, wv[t]) : _mm512_dpbusd_epi32(dot, wv[t], xv);
            }
            __m512 d = _mm512_set1_ps(xd[j * blocks + b]);
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), kInt8 ? d : _mm512_mul_ps(sw, d), acc[j]);
        }
    }
    if (kInt8) {
        __m512 sw = _mm512_loadu_ps(p.scales.data());
        for (int j = 0; j < X; ++j) acc[j] = _mm512_mul_ps(acc[j], sw);
    } else {
        const float *sums = xq.group_sums.data() + i0 * groups;
        for (int64_t g = 0; g < groups; ++g) {
            __m512 mv = _mm512_loadu_ps(p.mins.data() + 16 * g);
            for (int j = 0; j < X; ++j)
                acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(sums[j * groups + g]), acc[j]);
        }
    }
    const __mmask16 mask = __mmask16((1u << lanes) - 1);
    for (int j = 0; j < X; ++j) _mm512_mask_storeu_ps(y + (i0 + j) * n + r, mask, acc[j]);
}

// y = x W^T [m, n] for x [m, k] f32 quantized as `xq`: panels of 16 weight rows over libtorch's
// threads (`make_panel(r, lanes, panel)` fills one), each against all of x in tiles of 8 rows.
template <bool kInt8, class MakePanel>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void quantized_gemm(
    const Q8Prompt &xq, int64_t k, int64_t group, float *y, int64_t m, int64_t n,
    MakePanel make_panel) {
    constexpr int kX = 8;
    at::parallel_for(0, (n + 15) / 16, 1, [&](int64_t p0, int64_t p1) {
        Panel panel;
        for (int64_t p = p0; p < p1; ++p) {
            int64_t r = 16 * p;
            int lanes = int(std::min<int64_t>(16, n - r));
            make_panel(r, lanes, panel);
            auto tile = [&](auto x, int64_t i) {
                gemm_tile<decltype(x)::value, kInt8>(panel, xq, k, group, i, y, n, r, lanes);
            };
            int64_t i = 0;
            for (; i + kX <= m; i += kX) tile(std::integral_constant<int, kX>(), i);
            switch (m - i) {
            case 7: tile(std::integral_constant<int, 7>(), i); break;
            case 6: tile(std::integral_constant<int, 6>(), i); break;
            case 5: tile(std::integral_constant<int, 5>(), i); break;
            case 4: tile(std::integral_constant<int, 4>(), i); break;
            case 3: tile(std::integral_constant<int, 3>(), i); break;
            case 2: tile(std::integral_constant<int, 2>(), i); break;
            case 1: tile(std::integral_constant<int, 1>(), i); break;
            default: break;
            }
        }
    });
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int4_gemm(
    const Int4 &w, const float *x, float *y, int64_t m, int64_t n) {
    const Q8Prompt xq = quantize_prompt(x, m, w.k, w.group, false);
    quantized_gemm<false>(xq, w.k, w.group, y, m, n,
                          [&](int64_t r, int lanes, Panel &p) { int4_panel(w, r, lanes, p); });
}

// k a multiple of 32.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int8_gemm(
    const int8_t *q, const float *scales, const float *x, float *y, int64_t m, int64_t n,
    int64_t k) {
    const Q8Prompt xq = quantize_prompt(x, m, k, k, true);
    quantized_gemm<true>(xq, k, k, y, m, n, [&](int64_t r, int lanes, Panel &p) {
        int8_panel(q, scales, k, r, lanes, p);
    });
}

// sum_j bf16(a[j]) * b[j], eight at a time (the minimums against a row's group sums of activations).
__attribute__((target("avx2,fma,f16c"))) float dot_bf16_f32_avx2(const uint16_t *a,
                                                                 const float *b, int64_t len) {
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) acc = _mm256_fmadd_ps(load8(a, j, kBf16), _mm256_loadu_ps(b + j), acc);
    float total = hsum8(acc);
    for (; j < len; ++j) total += bf16_to_float(a[j]) * b[j];
    return total;
}

// One block's 32 int4 codes (16 bytes at `codes`, see Int4) against its 32 Q8_0 activations in
// input order: unpacked into one vector (low nibbles first), `vpmaddubsw` (codes unsigned, at
// most 15, so the 16-bit pair sums cannot saturate) and `vpmaddwd` to eight 32-bit sums.
__attribute__((target("avx2,fma,f16c"))) inline __m256i int4_block_avx2(const uint8_t *codes,
                                                                       __m256i xv) {
    const __m128i nibble = _mm_set1_epi8(15);
    __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes));
    __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), nibble),
                                 _mm_and_si128(bytes, nibble));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(c, xv), _mm256_set1_epi16(1));
}

// R rows of an int4 weight from r against row i of x as Q8_0 in input order (see Q8Prompt),
// without VNNI: each block through int4_block_avx2, its sums scaled by the activations' and the
// group's scales. The minimums meet the group sums of activations at the end.
template <int R>
__attribute__((target("avx2,fma,f16c"))) void int4_avx2_rows(const Int4 &w, const Q8Prompt &xq,
                                                            float *y, int64_t n, int64_t r,
                                                            int64_t i) {
    const int64_t k = w.k, blocks = k / 32, groups = k / w.group, per_group = w.group / 32;
    const int8_t *xc = xq.codes.data() + i * k;
    const float *xd = xq.scales.data() + i * blocks;
    __m256 acc[R];
    for (int q = 0; q < R; ++q) acc[q] = _mm256_setzero_ps();
    for (int64_t g = 0, b = 0; g < groups; ++g) {
        float sw[R];
        for (int q = 0; q < R; ++q) sw[q] = bf16_to_float(w.scales[(r + q) * groups + g]);
        for (int64_t end = b + per_group; b < end; ++b) {
            __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xc + 32 * b));
            for (int q = 0; q < R; ++q) {
                const uint8_t *codes = w.codes + (r + q) * (k / 2) + 16 * b;
                if (b % 4 == 0)
                    _mm_prefetch(reinterpret_cast<const char *>(codes + kPrefetchRows * (k / 2)),
                                 _MM_HINT_T0);
                acc[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(int4_block_avx2(codes, xv)),
                                         _mm256_set1_ps(xd[b] * sw[q]), acc[q]);
            }
        }
    }
    const float *sums = xq.group_sums.data() + i * groups;
    for (int q = 0; q < R; ++q)
        y[i * n + r + q] = hsum8(acc[q]) + dot_bf16_f32_avx2(w.mins + (r + q) * groups, sums, groups);
}

// int4_avx2_rows for groups of 32 (the default form), two blocks per step: one 256-bit load holds
// the codes of blocks b and b + 1, its low nibbles meet both blocks' first 16 activations and its
// high nibbles their last 16 (the two blocks' activations regrouped by 128-bit halves once per
// step for all R rows), the two `vpmaddubsw` products add in 16 bits (at most 4 * 15 * 127) before
// one `vpmaddwd`, and the two blocks' scales (adjacent bf16 pairs) scale the halves. An odd last
// block goes alone. Half the instructions per code of the one-block loop, which is bound by them.
template <int R>
__attribute__((target("avx2,fma,f16c"))) void int4_avx2_rows_g32(const Int4 &w,
                                                                const Q8Prompt &xq, float *y,
                                                                int64_t n, int64_t r,
                                                                int64_t i) {
    const int64_t k = w.k, blocks = k / 32;
    const __m256i nibble = _mm256_set1_epi8(15);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i halves = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const int8_t *xc = xq.codes.data() + i * k;
    const float *xd = xq.scales.data() + i * blocks;
    __m256 acc[R];
    for (int q = 0; q < R; ++q) acc[q] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xc + 32 * b));
        __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xc + 32 * b + 32));
        __m256i xlo = _mm256_permute2x128_si256(xa, xb, 0x20);
        __m256i xhi = _mm256_permute2x128_si256(xa, xb, 0x31);
        __m256 dx = _mm256_set_m128(_mm_set1_ps(xd[b + 1]), _mm_set1_ps(xd[b]));
        for (int q = 0; q < R; ++q) {
            const uint8_t *codes = w.codes + (r + q) * (k / 2) + 16 * b;
            if (b % 4 == 0)
                _mm_prefetch(reinterpret_cast<const char *>(codes + kPrefetchRows * (k / 2)),
                             _MM_HINT_T0);
            __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(codes));
            __m256i lo = _mm256_and_si256(bytes, nibble);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
            __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo),
                                             _mm256_maddubs_epi16(hi, xhi));
            __m256i dot = _mm256_madd_epi16(pairs, ones);
            uint32_t two;
            std::memcpy(&two, w.scales + (r + q) * blocks + b, 4);
            // bf16 -> f32: each 16-bit scale into the high half of a 32-bit lane.
            __m128i sw = _mm_unpacklo_epi16(_mm_setzero_si128(), _mm_cvtsi32_si128(int(two)));
            __m256 scale = _mm256_permutevar8x32_ps(
                _mm256_castps128_ps256(_mm_castsi128_ps(sw)), halves);
            acc[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(scale, dx), acc[q]);
        }
    }
    if (b < blocks) {
        __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xc + 32 * b));
        for (int q = 0; q < R; ++q) {
            __m256i dot = int4_block_avx2(w.codes + (r + q) * (k / 2) + 16 * b, xv);
            float sw = bf16_to_float(w.scales[(r + q) * blocks + b]);
            acc[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(xd[b] * sw), acc[q]);
        }
    }
    const float *sums = xq.group_sums.data() + i * blocks;
    for (int q = 0; q < R; ++q)
        y[i * n + r + q] = hsum8(acc[q]) + dot_bf16_f32_avx2(w.mins + (r + q) * blocks, sums, blocks);
}

// R rows of int8 codes from r against row i of x as Q8_0 in input order (see Q8Prompt), without
// VNNI. `vpmaddubsw` takes one unsigned operand, so the codes' magnitudes (`vpsignb` of a code by
// itself; -128 reads as 128 unsigned) meet x carrying the codes' signs (`vpsignb` of x by the
// codes, zero where a code is), as llama.cpp's AVX2 Q8_0 dot does: x stays within -127..127, so
// pair sums of at most 2 * 128 * 127 cannot saturate 16 bits. `vpmaddwd` sums them to 32 bits,
// each block's sums scaled by its activation scale; the row's scale at the end.
template <int R>
__attribute__((target("avx2,fma,f16c"))) void int8_q8_avx2_rows(const int8_t *w,
                                                                const float *scales,
                                                                const Q8Prompt &xq, float *y,
                                                                int64_t n, int64_t k, int64_t r,
                                                                int64_t i) {
    const int64_t blocks = k / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *xc = xq.codes.data() + i * k;
    const float *xd = xq.scales.data() + i * blocks;
    __m256 acc[R];
    for (int q = 0; q < R; ++q) acc[q] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xc + 32 * b));
        __m256 d = _mm256_set1_ps(xd[b]);
        for (int q = 0; q < R; ++q) {
            const int8_t *row = w + (r + q) * k + 32 * b;
            if (b % 2 == 0)
                _mm_prefetch(reinterpret_cast<const char *>(row + kPrefetchRows * k), _MM_HINT_T0);
            __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(row));
            __m256i dot = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(xv, c)), ones);
            acc[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc[q]);
        }
    }
    for (int q = 0; q < R; ++q) y[i * n + r + q] = hsum8(acc[q]) * scales[r + q];
}

// Rows r0..r1 of int8 codes against the m rows of x (see int8_q8_avx2_rows), 4 rows at a time.
__attribute__((target("avx2,fma,f16c"))) void int8_q8_avx2(const int8_t *w, const float *scales,
                                                          const Q8Prompt &xq, float *y,
                                                          int64_t m, int64_t n, int64_t k,
                                                          int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        for (int64_t i = 0; i < m; ++i) int8_q8_avx2_rows<4>(w, scales, xq, y, n, k, r, i);
    for (; r < r1; ++r)
        for (int64_t i = 0; i < m; ++i) int8_q8_avx2_rows<1>(w, scales, xq, y, n, k, r, i);
}

// Rows r0..r1 of an int4 weight against the m rows of x (see int4_avx2_rows), 4 rows at a time.
__attribute__((target("avx2,fma,f16c"))) void int4_avx2(const Int4 &w, const Q8Prompt &xq,
                                                       float *y, int64_t m, int64_t n, int64_t r0,
                                                       int64_t r1) {
    int64_t r = r0;
    const bool g32 = w.group == 32;
    for (; r + 4 <= r1; r += 4)
        for (int64_t i = 0; i < m; ++i)
            g32 ? int4_avx2_rows_g32<4>(w, xq, y, n, r, i) : int4_avx2_rows<4>(w, xq, y, n, r, i);
    for (; r < r1; ++r)
        for (int64_t i = 0; i < m; ++i)
            g32 ? int4_avx2_rows_g32<1>(w, xq, y, n, r, i) : int4_avx2_rows<1>(w, xq, y, n, r, i);
}
#endif

// Whether autograd would need to record the product (these kernels have no backward).
bool records_grad(const at::Tensor &x, const at::Tensor &w) {
    return at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
}

void check_matrix(const at::Tensor &w, const at::Tensor &x) {
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "the weight must be a contiguous matrix");
    TORCH_CHECK(x.dim() == 2 && x.size(1) == w.size(1), "x must be [m, ", w.size(1), "], not ",
                x.sizes());
    TORCH_CHECK(w.device().is_cpu() && x.device().is_cpu(), "these kernels run on the CPU");
}

// The int4 weight held by `codes` [n, k / 2] uint8, `scales` and `mins` [n, k / group] bf16
// (layout at the top), checked against x [m, k].
Int4 int4_weight(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scales,
                 const at::Tensor &mins, int64_t group) {
    int64_t n = codes.size(0), k = x.size(1);
    TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.is_contiguous() &&
                    codes.size(1) * 2 == k,
                "int4 codes must be a contiguous uint8 [n, ", k / 2, "] matrix, not ",
                codes.sizes());
    TORCH_CHECK(group >= 32 && group % 32 == 0 && k % group == 0,
                "int4 needs groups of 32 inputs or a multiple of it, and the inputs a multiple of "
                "the group; here ", k, " inputs, groups of ", group);
    for (const at::Tensor *t : {&scales, &mins})
        TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->dim() == 2 &&
                        t->size(0) == n && t->size(1) == k / group,
                    "int4 scales and minimums must be contiguous bf16 [", n, ", ", k / group,
                    "], not ", t->scalar_type(), " ", t->sizes());
    TORCH_CHECK(x.device().is_cpu() && codes.device().is_cpu() && scales.device().is_cpu() &&
                    mins.device().is_cpu(),
                "these kernels run on the CPU");
    return Int4{codes.data_ptr<uint8_t>(),
                reinterpret_cast<const uint16_t *>(scales.data_ptr()),
                reinterpret_cast<const uint16_t *>(mins.data_ptr()), k, group};
}

// Row r's f32 values v [k] quantized into the outputs of llava_quantize_rows (group 0: int8).
template <int Variant>
__attribute__((always_inline)) inline void quantize_row_impl(const float *v, int64_t k, int64_t group, int64_t r, at::Tensor *codes,
                              c10::BFloat16 *scales, c10::BFloat16 *mins) {
    if (group == 0) {
        float amax = 0.f;
        for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(v[j]));
        float s = std::max(amax / 127.f, 1e-12f);
        int8_t *q = codes->data_ptr<int8_t>() + r * k;
        for (int64_t j = 0; j < k; ++j)
            q[j] = int8_t(std::clamp(std::nearbyint(v[j] / s), -128.f, 127.f));
        scales[r] = c10::BFloat16(s);
        return;
    }
    int64_t groups = k / group;
    uint8_t *q = codes->data_ptr<uint8_t>() + r * (k / 2);
    std::memset(q, 0, k / 2);
    for (int64_t g = 0; g < groups; ++g) {
        const float *x = v + g * group;
        float lo = x[0], hi = x[0];
        for (int64_t j = 1; j < group; ++j) {
            lo = std::min(lo, x[j]);
            hi = std::max(hi, x[j]);
        }
        c10::BFloat16 s16(std::max((hi - lo) / 15.f, 1e-12f)), m16(lo);
        float s = float(s16), m = float(m16);
        for (int64_t j = 0; j < group; ++j) {
            int64_t e = g * group + j;
            int code = int(std::clamp(std::nearbyint((x[j] - m) / s), 0.f, 15.f));
            q[e / 32 * 16 + e % 16] |= uint8_t(e % 32 < 16 ? code : code << 4);
        }
        scales[r * groups + g] = s16;
        mins[r * groups + g] = m16;
    }
}

void quantize_row(const float *v, int64_t k, int64_t group, int64_t r, at::Tensor *codes,
                  c10::BFloat16 *scales, c10::BFloat16 *mins) {
    quantize_row_impl<0>(v, k, group, r, codes, scales, mins);
}

#if defined(__x86_64__)
// The same, compiled for AVX2: rounding and the loops vectorise (the baseline has no roundps).
__attribute__((target("avx2,fma,f16c"))) void quantize_row_avx2(
    const float *v, int64_t k, int64_t group, int64_t r, at::Tensor *codes,
    c10::BFloat16 *scales, c10::BFloat16 *mins) {
    quantize_row_impl<1>(v, k, group, r, codes, scales, mins);
}
#endif

}  // namespace

extern "C" {

void llava_gemv_free_message(char *message) {
    std::free(message);
}

// 0: plain C++, 1: AVX2, 2: AVX-512, 3: AVX-512 with VNNI.
int llava_gemv_isa() {
    return isa();
}

// y = x W^T: x [m, k] (any float dtype), W [n, k] bf16, f16 or f32, contiguous; y [m, n] in x's
// dtype, using at most the instructions of `level` (an `Isa`; tests run each one). Where autograd
// would record the product (grad mode on and an input requiring grad) *out is left NULL: the
// caller multiplies by libtorch's op instead.
char *llava_gemv_dense(const at::Tensor *x_, const at::Tensor *w_, int level_,
                       at::Tensor **out) {
    return llava_ffi::guarded([&] {
        Isa level = std::min(isa(), Isa(level_));
        const at::Tensor &w = *w_;
        check_matrix(w, *x_);
        if (records_grad(*x_, w)) {
            *out = nullptr;
            return;
        }
        at::Tensor x = x_->to(at::kFloat).contiguous();
        int64_t m = x.size(0), k = w.size(1), n = w.size(0);
        DenseFn fn;
        switch (w.scalar_type()) {
            case at::kBFloat16: fn = dense_fn<kBf16>(level); break;
            case at::kHalf: fn = dense_fn<kF16>(level); break;
            case at::kFloat: fn = dense_fn<kF32>(level); break;
            default: TORCH_CHECK(false, "no dense kernel for weights of ", w.scalar_type());
        }
        at::Tensor y = at::empty({m, n}, x.options());
        const void *wp = w.data_ptr();
        const float *xp = x.data_ptr<float>();
        float *yp = y.data_ptr<float>();
        int64_t grain = grain_rows(k, w.element_size());
        at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
            fn(wp, xp, yp, m, n, k, b0 * grain, std::min(n, b1 * grain));
        });
        *out = new at::Tensor(y.to(x_->scalar_type()));
    });
}

// Whether the CPU multiplies bf16 pairs natively (AVX512_BF16): libtorch's bf16 GEMMs are fast
// there and slow (widening element by element) elsewhere.
int llava_gemv_bf16_dot() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

// y = x W^T for a prompt's many rows against bf16 or f16 weights, by libtorch's f32 GEMM on
// blocks of W widened to f32 (about 8 MiB each, so the f32 copy stays in cache and no whole f32
// matrix is made): where the CPU has no bf16 arithmetic, libtorch's bf16 GEMM runs at a third of
// its f32 speed and its f16 GEMM slower still. x [m, k] any float dtype; y [m, n] in x's dtype.
// *out is NULL where autograd would record the product.
char *llava_gemm_widened(const at::Tensor *x_, const at::Tensor *w_, int level_,
                         at::Tensor **out) {
    return llava_ffi::guarded([&] {
        Isa level = std::min(isa(), Isa(level_));
        const at::Tensor &w = *w_;
        check_matrix(w, *x_);
        if (records_grad(*x_, w)) {
            *out = nullptr;
            return;
        }
        Dtype t;
        switch (w.scalar_type()) {
            case at::kBFloat16: t = kBf16; break;
            case at::kHalf: t = kF16; break;
            default: TORCH_CHECK(false, "widening takes bf16 or f16 weights, not ", w.scalar_type());
        }
        at::Tensor x = x_->to(at::kFloat).contiguous();
        int64_t k = w.size(1);
        const char *wp = static_cast<const char *>(w.data_ptr());
        int64_t row_bytes = k * int64_t(w.element_size());
        at::Tensor y = gemm_by_blocks(x, w.size(0), k, [&](int64_t r0, int64_t rows, float *dst) {
            widen(wp + r0 * row_bytes, t, dst, rows * k, level);
        });
        *out = new at::Tensor(y.to(x_->scalar_type()));
    });
}

// y = (x Q^T) * scales for a prompt's many rows x [m, k] against int8 codes Q [n, k] with a
// scale per row (scales [n], any float dtype); y [m, n] in x's dtype. With VNNI (and k a multiple
// of 32), x quantized as Q8_0 meets the codes in an integer GEMM of ours (int8_gemm); otherwise
// as llava_gemm_widened, on blocks of the weight dequantized to f32 (libtorch's int8 kernel works
// row by row, and a weight dequantized to bf16 for the call meets the slow bf16 GEMM).
char *llava_gemm_int8(const at::Tensor *x_, const at::Tensor *q_, const at::Tensor *scales_,
                      int level_, at::Tensor **out) {
    return llava_ffi::guarded([&] {
        Isa level = std::min(isa(), Isa(level_));
        const at::Tensor &q = *q_;
        check_matrix(q, *x_);
        TORCH_CHECK(q.scalar_type() == at::kChar, "int8 codes expected, not ", q.scalar_type());
        at::Tensor scales = scales_->to(at::kFloat).contiguous();
        TORCH_CHECK(scales.numel() == q.size(0), "one scale per row expected");
        at::Tensor x = x_->to(at::kFloat).contiguous();
        const int8_t *qp = q.data_ptr<int8_t>();
        const float *sp = scales.data_ptr<float>();
        int64_t k = q.size(1);
#if defined(__x86_64__)
        if (level >= kAvx512Vnni && k % 32 == 0) {
            int64_t m = x.size(0), n = q.size(0);
            at::Tensor y = at::empty({m, n}, x.options());
            int8_gemm(qp, sp, x.data_ptr<float>(), y.data_ptr<float>(), m, n, k);
            *out = new at::Tensor(y.to(x_->scalar_type()));
            return;
        }
#endif
        at::Tensor y = gemm_by_blocks(x, q.size(0), k, [&](int64_t r0, int64_t rows, float *dst) {
            widen_int8(qp, sp, k, r0, rows, dst, level);
        });
        *out = new at::Tensor(y.to(x_->scalar_type()));
    });
}

// y = x W^T for a prompt's many rows x [m, k] against an int4 weight (see int4_weight); y [m, n]
// in x's dtype. With VNNI, x quantized as signed Q8_0 meets the codes in an integer GEMM of ours
// (int4_gemm); otherwise as llava_gemm_int8, on blocks of the weight dequantized to f32.
char *llava_gemm_int4(const at::Tensor *x_, const at::Tensor *codes, const at::Tensor *scales,
                      const at::Tensor *mins, int64_t group, int level_, at::Tensor **out) {
    return llava_ffi::guarded([&] {
        Isa level = std::min(isa(), Isa(level_));
        TORCH_CHECK(x_->dim() == 2, "x must be a matrix");
        at::Tensor x = x_->to(at::kFloat).contiguous();
        Int4 w = int4_weight(x, *codes, *scales, *mins, group);
#if defined(__x86_64__)
        if (level >= kAvx512Vnni) {
            int64_t m = x.size(0), n = codes->size(0);
            at::Tensor y = at::empty({m, n}, x.options());
            int4_gemm(w, x.data_ptr<float>(), y.data_ptr<float>(), m, n);
            *out = new at::Tensor(y.to(x_->scalar_type()));
            return;
        }
#endif
        at::Tensor y = gemm_by_blocks(x, codes->size(0), w.k, [&](int64_t r0, int64_t rows, float *dst) {
            widen_int4(w, r0, rows, dst, level);
        });
        *out = new at::Tensor(y.to(x_->scalar_type()));
    });
}

// y = x W^T for an int4 weight (see int4_weight) and a few rows of x [m, k]; y [m, n] in x's
// dtype. With VNNI x is quantized as signed Q8_0 and meets the codes directly (int4_vnni); with
// AVX2 (or AVX-512 without VNNI) as Q8_0 in input order, meeting them by `vpmaddubsw`
// (int4_avx2); in plain C++ rows of W are widened to f32 16 at a time and multiplied by the
// dense kernel.
char *llava_gemv_int4(const at::Tensor *x_, const at::Tensor *codes, const at::Tensor *scales,
                      const at::Tensor *mins, int64_t group, int level_, at::Tensor **out) {
    return llava_ffi::guarded([&] {
        Isa level = std::min(isa(), Isa(level_));
        TORCH_CHECK(x_->dim() == 2, "x must be a matrix");
        at::Tensor x = x_->to(at::kFloat).contiguous();
        Int4 w = int4_weight(x, *codes, *scales, *mins, group);
        int64_t m = x.size(0), k = w.k, n = codes->size(0);
        at::Tensor y = at::empty({m, n}, x.options());
        const float *xp = x.data_ptr<float>();
        float *yp = y.data_ptr<float>();
        int64_t grain = grain_rows(k / 2, 1);
#if defined(__x86_64__)
        if (level >= kAvx512Vnni) {
            std::vector<Q8Signed> xs(m);
            at::parallel_for(0, m, 1, [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) xs[i] = quantize_row_signed(xp + i * k, k, group);
            });
            at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
                int4_vnni(w, xs, yp, m, n, b0 * grain, std::min(n, b1 * grain));
            });
            *out = new at::Tensor(y.to(x_->scalar_type()));
            return;
        }
        if (level >= kAvx2) {
            const Q8Prompt xq = quantize_prompt(xp, m, k, group, false);
            at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
                int4_avx2(w, xq, yp, m, n, b0 * grain, std::min(n, b1 * grain));
            });
            *out = new at::Tensor(y.to(x_->scalar_type()));
            return;
        }
#endif
        DenseFn dense = dense_fn<kF32>(level);
        at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
            std::vector<float> rows(16 * k);
            for (int64_t r = b0 * grain; r < std::min(n, b1 * grain); r += 16) {
                int64_t count = std::min<int64_t>(16, n - r);
                widen_int4(w, r, count, rows.data(), level);
                dense(rows.data(), xp, yp + r, m, n, k, 0, count);
            }
        });
        *out = new at::Tensor(y.to(x_->scalar_type()));
    });
}

// y = (x Q^T) * scales: Q [n, k] int8 codes, scales [n] (any float dtype); x [m, k]; y [m, n] in
// x's dtype, using at most the instructions of `level`. With VNNI (and k a multiple of 64) x is
// quantized as Q8_0 first (int8_vnni); with AVX2 (or AVX-512 without VNNI) and k a multiple of
// 32 too, meeting the codes by `vpmaddubsw` (int8_q8_avx2); otherwise the codes are widened.
char *llava_gemv_int8(const at::Tensor *x_, const at::Tensor *q_, const at::Tensor *scales_,
                      int level_, at::Tensor **out) {
    return llava_ffi::guarded([&] {
        const at::Tensor &q = *q_;
        check_matrix(q, *x_);
        TORCH_CHECK(q.scalar_type() == at::kChar, "int8 codes expected, not ", q.scalar_type());
        at::Tensor x = x_->to(at::kFloat).contiguous();
        at::Tensor scales = scales_->to(at::kFloat).contiguous();
        int64_t m = x.size(0), k = q.size(1), n = q.size(0);
        TORCH_CHECK(scales.numel() == n, "one scale per row expected");
        at::Tensor y = at::empty({m, n}, x.options());
        const int8_t *wp = q.data_ptr<int8_t>();
        const float *sp = scales.data_ptr<float>();
        const float *xp = x.data_ptr<float>();
        float *yp = y.data_ptr<float>();
        int64_t grain = grain_rows(k, 1);
        Isa level = std::min(isa(), Isa(level_));
#if defined(__x86_64__)
        if (level >= kAvx512Vnni && k % 64 == 0) {
            std::vector<Q8Row> xs;
            for (int64_t i = 0; i < m; ++i) xs.push_back(quantize_row(xp + i * k, k));
            at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
                int8_vnni(wp, sp, xs, yp, m, n, k, b0 * grain, std::min(n, b1 * grain));
            });
            *out = new at::Tensor(y.to(x_->scalar_type()));
            return;
        }
        if (level >= kAvx2 && k % 32 == 0) {
            const Q8Prompt xq = quantize_prompt(xp, m, k, k, false);
            at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
                int8_q8_avx2(wp, sp, xq, yp, m, n, k, b0 * grain, std::min(n, b1 * grain));
            });
            *out = new at::Tensor(y.to(x_->scalar_type()));
            return;
        }
#endif
        at::parallel_for(0, (n + grain - 1) / grain, 1, [&](int64_t b0, int64_t b1) {
#if defined(__x86_64__)
            if (level >= kAvx2) {
                int8_avx2(wp, sp, xp, yp, m, n, k, b0 * grain, std::min(n, b1 * grain));
                return;
            }
#endif
            int8_scalar(wp, sp, xp, yp, m, n, k, b0 * grain, std::min(n, b1 * grain));
        });
        *out = new at::Tensor(y.to(x_->scalar_type()));
    });
}

// Quantizes the rows of w [n, k] (bf16, f16 or f32; contiguous, on the CPU) into preallocated
// outputs, one pass over each row, rows split over libtorch's threads: with group 0, int8 `codes`
// [n, k] and bf16 `scales` [n]; otherwise int4 `codes` [n, k / 2] uint8 and bf16 `scales` and
// `mins` [n, k / group] in Int4's layout. Element for element the arithmetic of
// foundation::quant's tensor ops (f32, round half to even, bf16 rounding where they round).
char *llava_quantize_rows(const at::Tensor *w_, int64_t group, at::Tensor *codes_,
                          at::Tensor *scales_, at::Tensor *mins_) {
    return llava_ffi::guarded([&] {
        const at::Tensor &w = *w_;
        TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(),
                    "a contiguous CPU matrix expected");
        Dtype t;
        switch (w.scalar_type()) {
            case at::kBFloat16: t = kBf16; break;
            case at::kHalf: t = kF16; break;
            case at::kFloat: t = kF32; break;
            default: TORCH_CHECK(false, "cannot quantize weights of ", w.scalar_type());
        }
        int64_t n = w.size(0), k = w.size(1);
        bool int4 = group > 0;
        TORCH_CHECK(!int4 || (group % 32 == 0 && k % group == 0), "groups of ", group,
                    " do not divide ", k, " inputs");
        int64_t groups = int4 ? k / group : 1;
        for (const at::Tensor *o : {codes_, scales_})
            TORCH_CHECK(o->is_contiguous() && o->device().is_cpu(), "contiguous outputs expected");
        TORCH_CHECK(codes_->scalar_type() == (int4 ? at::kByte : at::kChar) &&
                        codes_->numel() == (int4 ? n * k / 2 : n * k),
                    "codes of the wrong type or size");
        TORCH_CHECK(scales_->scalar_type() == at::kBFloat16 && scales_->numel() == n * groups,
                    "scales of the wrong type or size");
        if (int4)
            TORCH_CHECK(mins_ && mins_->is_contiguous() && mins_->scalar_type() == at::kBFloat16 &&
                            mins_->numel() == n * groups,
                        "minimums of the wrong type or size");
        const char *wp = static_cast<const char *>(w.data_ptr());
        int64_t row_bytes = k * int64_t(w.element_size());
        auto *scales = reinterpret_cast<c10::BFloat16 *>(scales_->data_ptr());
        auto *mins = int4 ? reinterpret_cast<c10::BFloat16 *>(mins_->data_ptr()) : nullptr;
        Isa level = isa();
        at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
            std::vector<float> v(k);
            for (int64_t r = r0; r < r1; ++r) {
                widen(wp + r * row_bytes, t, v.data(), k, level);
#if defined(__x86_64__)
                if (level >= kAvx2) {
                    quantize_row_avx2(v.data(), k, group, r, codes_, scales, mins);
                    continue;
                }
#endif
                quantize_row(v.data(), k, group, r, codes_, scales, mins);
            }
        });
    });
}

}  // extern "C"
