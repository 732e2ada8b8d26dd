// zcrpc-bench — pieces every part of the bench uses: errors, CPUs, sizes, and the timed
// loop that measures a latency (one steady_clock reading on each side of a round trip).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "os/spin.h"
#include "zcrpc/transport.h"

namespace zcrpc::bench {

using os::cpuRelax;
using zcrpc::Clock;
using zcrpc::Deadline;

/// Anything that stops a measurement: a failed system call, a peer that went silent, an
/// echo that came back wrong. The message names what failed.
class BenchError final : public std::runtime_error {
 public:
  explicit BenchError(const std::string& what) : std::runtime_error(what) {}
};

/// "context: strerror(errno)" as a BenchError.
[[noreturn]] void throwErrno(const std::string& context);

/// Removes a unix socket's file now (a stale one from a killed run) and when it goes.
class UnlinkOnExit final {
 public:
  explicit UnlinkOnExit(std::string path);
  ~UnlinkOnExit();
  UnlinkOnExit(const UnlinkOnExit&) = delete;
  UnlinkOnExit& operator=(const UnlinkOnExit&) = delete;

 private:
  std::string path_;
};

/// Whether `fd` is readable or hung up now (never waits; false for -1).
bool readable(int fd) noexcept;

/// Pins the calling thread to `cpu` and checks it now runs there. Throws BenchError.
void pinToCpu(int cpu);
/// Involuntary context switches of this process so far: other load taking our CPU.
uint64_t preemptionCount() noexcept;
/// The host's 1-minute load average (-1 if unknown).
double loadAverage() noexcept;
/// "64 B", "4 KiB", "1 MiB", or "1000 B" for sizes that are not whole KiB/MiB.
std::string formatSize(uint64_t bytes);
/// "64", "4K", "4KiB", "1M", "1MiB" -> bytes, 1 byte to 16 MiB. Throws BenchError.
size_t parseSize(const std::string& text);
/// "A,B": two different CPUs this process may run on. Throws BenchError.
std::pair<int, int> parseCpus(const std::string& text);

inline constexpr size_t kMaxPayloadBytes = size_t{16} << 20;
/// How long a side waits without progress before it declares its peer stuck.
inline constexpr std::chrono::seconds kStallTimeout{10};

/// Where a row's systems run: the two processes share memory (shm rows: zcrpc's shm://
/// and the rivals' shared-memory or unix-socket paths) or talk over TCP on 127.0.0.1.
enum class Transport : uint8_t { kShm = 0, kTcp = 1 };
std::string_view transportName(Transport t) noexcept;
Transport parseTransport(std::string_view text);  ///< throws BenchError

/// How much of a latency cell to run: warm-up first, then measurement, each stopping at
/// whichever bound comes first.
struct Budget {
  std::chrono::nanoseconds warmup{0};
  uint64_t warmupIterations = 0;
  std::chrono::nanoseconds measure{0};
  uint64_t maxIterations = 0;

  /// Bounds for payloads of `payloadBytes` when a cell may take `seconds`: fewer
  /// iterations for bigger payloads; warm-up a quarter of the time and count.
  static Budget forPayload(size_t payloadBytes, double seconds);
  std::chrono::nanoseconds total() const { return warmup + measure; }
};

/// Round-trip times of one cell, in nanoseconds (nearest-rank percentiles).
struct Latency {
  uint64_t samples = 0;
  uint64_t minNs = 0, p50Ns = 0, p99Ns = 0, p999Ns = 0, maxNs = 0;
};

/// A throughput cell: messages or calls in `seconds`.
struct Rate {
  uint64_t count = 0;
  double seconds = 0;
  double perSecond = 0;
  double bytesPerSecond = 0;  ///< payload bytes (each way)
  /// Pipelined calls: the rate over the run less its stalls (passes of the client's loop
  /// of 2 ms or more, when other load kept a process off its CPU), and their share of it.
  double stallFreePerSecond = 0;
  double stalledFraction = 0;
  uint32_t window = 0;  ///< calls kept outstanding, where that applies
};

/// `count` messages or calls of `bytes` each in `seconds`.
Rate rateOf(uint64_t count, double seconds, size_t bytes);

/// Sorts `samples` and takes nearest-rank percentiles.
Latency summarizeLatency(std::span<uint64_t> samples);

/// Warm-up, then timed round trips: `roundTrip()` until the budget's time or count runs
/// out, each timed with one steady_clock reading on each side. A template, so every system
/// is timed by the same inlined code. `samples` bounds the count too and must be
/// pre-touched. `prepare()` runs before each round trip, outside the timed part.
template <typename RoundTrip, typename Prepare = void (*)()>
Latency measureLatency(
    RoundTrip&& roundTrip, const Budget& b, std::span<uint64_t> samples,
    Prepare&& prepare = [] {}) {
  auto warmEnd = Clock::now() + b.warmup;
  for (uint64_t i = 0; i < b.warmupIterations; ++i) {
    prepare();
    roundTrip();
    if ((i & 15) == 15 && Clock::now() >= warmEnd) break;
  }
  size_t limit = std::min<uint64_t>(b.maxIterations, samples.size());
  size_t n = 0;
  auto end = Clock::now() + b.measure;
  while (n < limit) {
    prepare();
    auto t0 = Clock::now();
    roundTrip();
    auto t1 = Clock::now();
    samples[n++] = static_cast<uint64_t>((t1 - t0).count());
    if (t1 >= end) break;
  }
  return summarizeLatency(samples.first(n));
}

/// Deadline for a wait inside a cell: the cell's own bound plus room for a stall report.
inline Deadline cellDeadline(std::chrono::nanoseconds cellTime) {
  return Clock::now() + cellTime + kStallTimeout;
}

}  // namespace zcrpc::bench
