// The per-example random bits of jaxgan.keys.bits as an XLA FFI handler for JAX's CPU backend
// (jaxgan.cpu.use_native_bits builds and registers it).
//
//   jaxgan_threefry_rows(key u32[..., 2], ids u32[..., n]) -> bits u32[..., n, m]
//
// For row r with key (k1, k2), h = ceil(m / 2) and j < h, the Threefry-2x32-20 hash of the
// counter (ids[r], j) under (k1, k2) is (a_j, b_j); the row is (a_0 .. a_{h-1}, b_0 .. b_{h-1})
// cut to m words. The same words jaxgan.keys.bits computes with XLA; XLA's loop fusion computes
// each output word of the hash in its own loop, so there every hash is evaluated twice, here once.
// The leading dimensions (a vmap) are shared by key, ids and bits. Rows are split over XLA's
// intra-op thread pool; the calling thread takes chunks too, so the call never waits for a pool
// thread that has not started.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline uint32_t RotateLeft(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// Four rounds of Threefry-2x32 with rotation constants r0..r3 (Salmon et al. 2011, table 4).
#define JAXGAN_FOUR_ROUNDS(r0, r1, r2, r3)     \
  a += b; b = RotateLeft(b, r0) ^ a;           \
  a += b; b = RotateLeft(b, r1) ^ a;           \
  a += b; b = RotateLeft(b, r2) ^ a;           \
  a += b; b = RotateLeft(b, r3) ^ a;

// Rows [r0, r1) of the output, each m words, row r keyed by key[r / n]. The j loop is plain
// uint32 arithmetic that the compiler vectorises; target_clones picks AVX-512 (which rotates in
// one instruction) or AVX2 where the CPU has them.
__attribute__((target_clones("avx512f", "avx2", "default")))
void Rows(const uint32_t* key, const uint32_t* ids, uint32_t* out, int64_t n, int64_t m, int64_t r0,
          int64_t r1) {
  const int64_t h = (m + 1) / 2;
  const int64_t nb = m - h;  // the b words kept: h, or h - 1 when m is odd
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t k0 = key[2 * (r / n)], k1 = key[2 * (r / n) + 1];
    const uint32_t k2 = k0 ^ k1 ^ 0x1BD11BDAu;
    const uint32_t x0 = ids[r];
    uint32_t* row_a = out + r * m;
    uint32_t* row_b = row_a + h;
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
      row_a[j] = a;
      if (j < nb) row_b[j] = b;
    }
  }
}

#undef JAXGAN_FOUR_ROUNDS

// One call's rows, handed out in chunks to whichever thread asks next. Shared (and kept alive)
// by every task scheduled for it, which may start after the call has returned.
struct Work {
  const uint32_t* key;
  const uint32_t* ids;
  uint32_t* out;
  int64_t n, m, rows, chunks;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      Rows(key, ids, out, n, m, rows * c / chunks, rows * (c + 1) / chunks);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Below this many output words per chunk, splitting costs more than it saves.
constexpr int64_t kMinChunkWords = 8192;

ffi::Error ThreefryRows(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key, ffi::Buffer<ffi::U32> ids,
                        ffi::ResultBuffer<ffi::U32> bits) {
  const auto dims = bits->dimensions();
  if (dims.size() < 2 || key.element_count() * (ids.dimensions().back()) != 2 * ids.element_count()) {
    return ffi::Error::InvalidArgument("jaxgan_threefry_rows: expected key [..., 2], ids [..., n], bits [..., n, m]");
  }
  const int64_t n = ids.dimensions().back();
  const int64_t rows = ids.element_count();
  const int64_t m = rows == 0 ? 0 : bits->element_count() / rows;
  if (rows == 0 || m == 0) return ffi::Error::Success();
  auto work = std::make_shared<Work>();
  work->key = key.typed_data();
  work->ids = ids.typed_data();
  work->out = bits->typed_data();
  work->n = n;
  work->m = m;
  work->rows = rows;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  work->chunks = std::clamp<int64_t>(rows * m / kMinChunkWords, 1, std::min<int64_t>(2 * threads, rows));
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  // Only chunks already taken are outstanding, and the threads that took them are running them.
  while (work->done.load(std::memory_order_acquire) < work->chunks) {
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganThreefryRows, ThreefryRows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());
