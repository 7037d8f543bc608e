// The per-example draws of jaxgan.keys as XLA FFI handlers for JAX's CPU backend
// (jaxgan.cpu.draws builds them and registers them as lowerings of jaxgan.keys' row draws).
//
//   jaxgan_threefry_rows(key u32[..., 2], ids u32[..., n]) -> bits u32[..., n, m]
//   jaxgan_threefry_normal(key u32[..., 2], ids u32[..., n]) -> z f32[..., n, m]
//
// For row r with key (k1, k2), h = ceil(m / 2) and j < h, the Threefry-2x32-20 hash of the
// counter (ids[r], j) under (k1, k2) is (a_j, b_j); the row's bits are (a_0 .. a_{h-1},
// b_0 .. b_{h-1}) cut to m words: the words jaxgan.keys.bits computes with XLA. XLA's loop
// fusion computes each output word of the hash in its own loop, so there every hash is
// evaluated twice; here once. The normal draw is jaxgan.keys.normal's transform of those bits,
// sqrt(2) erfinv(u) of the uniform u in (-1, 1) they make, with M. Giles's single-precision
// erfinv ("Approximating the erfinv function", GPU Computing Gems Jade Edition, 2011; XLA uses
// the same polynomials) and a logarithm of its own below, so it agrees with XLA's draw to a few
// float32 ulps, not bit for bit.
//
// The leading dimensions (a vmap) are shared by key, ids and the output. Rows are split over
// XLA's intra-op thread pool; the calling thread takes chunks too, so the call never waits for
// a pool thread that has not started.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#define JAXGAN_INLINE inline __attribute__((always_inline))

JAXGAN_INLINE uint32_t RotateLeft(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// Four rounds of Threefry-2x32 with rotation constants r0..r3 (Salmon et al. 2011, table 4).
#define JAXGAN_FOUR_ROUNDS(r0, r1, r2, r3)     \
  a += b; b = RotateLeft(b, r0) ^ a;           \
  a += b; b = RotateLeft(b, r1) ^ a;           \
  a += b; b = RotateLeft(b, r2) ^ a;           \
  a += b; b = RotateLeft(b, r3) ^ a;

// One row's m words for counter word x0 under key (k0, k1): plain uint32 arithmetic over j that
// the compiler vectorises.
JAXGAN_INLINE void HashRow(uint32_t k0, uint32_t k1, uint32_t x0, int64_t m, uint32_t* row) {
  const uint32_t k2 = k0 ^ k1 ^ 0x1BD11BDAu;
  const int64_t h = (m + 1) / 2;
  const int64_t nb = m - h;  // the b words kept: h, or h - 1 when m is odd
  uint32_t* row_b = row + h;
  for (int64_t j = 0; j < h; ++j) {
    uint32_t a = x0 + k0, b = static_cast<uint32_t>(j) + k1;
    JAXGAN_FOUR_ROUNDS(13, 15, 26, 6)
    a += k1; b += k2 + 1u;
    JAXGAN_FOUR_ROUNDS(17, 29, 16, 24)
    a += k2; b += k0 + 2u;
    JAXGAN_FOUR_ROUNDS(13, 15, 26, 6)
    a += k0; b += k1 + 3u;
    JAXGAN_FOUR_ROUNDS(17, 29, 16, 24)
    a += k1; b += k2 + 4u;
    JAXGAN_FOUR_ROUNDS(13, 15, 26, 6)
    a += k2; b += k0 + 5u;
    row[j] = a;
    if (j < nb) row_b[j] = b;
  }
}

#undef JAXGAN_FOUR_ROUNDS

JAXGAN_INLINE float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

JAXGAN_INLINE uint32_t ToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// log(x) for finite x > 0 (normal floats): x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
// log(m) = 2 atanh(s) = 2 (s + s^3/3 + ... + s^9/9) with s = (m - 1) / (m + 1), |s| <= 0.1716
// (the series' remainder is below 1e-9). Branch-free, so the loop around it vectorises.
JAXGAN_INLINE float Log(float x) {
  const uint32_t bits = ToBits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  float m = FromBits((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e += big ? 1 : 0;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return static_cast<float>(e) * 0.693147182f + 2.0f * s * series;
}

// erfinv(x) for x in (-1, 1): Giles's two single-precision polynomials, both evaluated and one
// selected (w < 5 is the central one).
JAXGAN_INLINE float ErfInv(float x) {
  const float w = -Log((1.0f - x) * (1.0f + x));
  const float c = w - 2.5f;
  float p = 2.81022636e-08f;
  p = 3.43273939e-07f + p * c;
  p = -3.5233877e-06f + p * c;
  p = -4.39150654e-06f + p * c;
  p = 0.00021858087f + p * c;
  p = -0.00125372503f + p * c;
  p = -0.00417768164f + p * c;
  p = 0.246640727f + p * c;
  p = 1.50140941f + p * c;
  const float t = std::sqrt(w) - 3.0f;
  float q = -0.000200214257f;
  q = 0.000100950558f + q * t;
  q = 0.00134934322f + q * t;
  q = -0.00367342844f + q * t;
  q = 0.00573950773f + q * t;
  q = -0.0076224613f + q * t;
  q = 0.00943887047f + q * t;
  q = 1.00167406f + q * t;
  q = 2.83297682f + q * t;
  return (w < 5.0f ? p : q) * x;
}

// Standard normals from a row's bits, as jaxgan.keys.normal makes them: the 23 high bits as a
// float in [0, 1), mapped to [lo, 1) with lo the float after -1, then sqrt(2) erfinv.
JAXGAN_INLINE void NormalRow(const uint32_t* bits, int64_t m, float* out) {
  const float lo = -0.99999994f;  // nextafter(-1, 0)
  for (int64_t j = 0; j < m; ++j) {
    const float f = FromBits((bits[j] >> 9) | 0x3F800000u) - 1.0f;
    const float u = std::max(lo, f * (1.0f - lo) + lo);
    out[j] = 1.41421356f * ErfInv(u);
  }
}

// Rows [r0, r1): the bits (out is uint32), or the normals (out is float, each row's bits made
// in scratch first). Row r is keyed by key[r / n]. target_clones compiles it for AVX-512
// (which rotates in one instruction), for AVX2 with FMA, and for any x86-64, and picks one for
// the CPU it runs on (on x86-64; elsewhere one build for the compiler's default target).
#if defined(__x86_64__) && defined(__GNUC__)
#define JAXGAN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define JAXGAN_CLONES
#endif
JAXGAN_CLONES
void Rows(bool normal, const uint32_t* key, const uint32_t* ids, void* out, int64_t n, int64_t m,
          int64_t r0, int64_t r1) {
  std::unique_ptr<uint32_t[]> scratch(normal ? new uint32_t[m] : nullptr);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* k = key + 2 * (r / n);
    if (normal) {
      HashRow(k[0], k[1], ids[r], m, scratch.get());
      NormalRow(scratch.get(), m, static_cast<float*>(out) + r * m);
    } else {
      HashRow(k[0], k[1], ids[r], m, static_cast<uint32_t*>(out) + r * m);
    }
  }
}

// One call's rows, handed out in chunks to whichever thread asks next. Shared (and kept alive)
// by every task scheduled for it, which may start after the call has returned.
struct Work {
  bool normal;
  const uint32_t* key;
  const uint32_t* ids;
  void* out;
  int64_t n, m, rows, chunks;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      Rows(normal, key, ids, out, n, m, rows * c / chunks, rows * (c + 1) / chunks);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Below this many output words per chunk, splitting costs more than it saves.
constexpr int64_t kMinChunkWords = 8192;

ffi::Error Draw(bool normal, ffi::ThreadPool& pool, ffi::Buffer<ffi::U32>& key, ffi::Buffer<ffi::U32>& ids,
                void* out, ffi::Span<const int64_t> out_dims, int64_t out_count) {
  if (out_dims.size() < 2 || ids.dimensions().size() == 0 ||
      key.element_count() * ids.dimensions().back() != 2 * ids.element_count()) {
    return ffi::Error::InvalidArgument("jaxgan_threefry: expected key [..., 2], ids [..., n], output [..., n, m]");
  }
  const int64_t rows = ids.element_count();
  if (rows == 0 || out_count == 0) return ffi::Error::Success();
  auto work = std::make_shared<Work>();
  work->normal = normal;
  work->key = key.typed_data();
  work->ids = ids.typed_data();
  work->out = out;
  work->n = ids.dimensions().back();
  work->m = out_count / rows;
  work->rows = rows;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  work->chunks = std::clamp<int64_t>(out_count / kMinChunkWords, 1, std::min<int64_t>(2 * threads, rows));
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  // Only chunks already taken are outstanding, and the threads that took them are running them.
  while (work->done.load(std::memory_order_acquire) < work->chunks) {
  }
  return ffi::Error::Success();
}

ffi::Error ThreefryRows(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key, ffi::Buffer<ffi::U32> ids,
                        ffi::ResultBuffer<ffi::U32> bits) {
  return Draw(false, pool, key, ids, bits->typed_data(), bits->dimensions(), bits->element_count());
}

ffi::Error ThreefryNormal(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key, ffi::Buffer<ffi::U32> ids,
                          ffi::ResultBuffer<ffi::F32> z) {
  return Draw(true, pool, key, ids, z->typed_data(), z->dimensions(), z->element_count());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganThreefryRows, ThreefryRows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganThreefryNormal, ThreefryNormal,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
