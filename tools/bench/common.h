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

#include <sys/types.h>
#include <time.h>
#include <unistd.h>

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
/// "10k", "1000", "2.5k", "1M" calls per second: 1 to 1 M. Throws BenchError.
double parseRate(const std::string& text);
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

  /// Open loop: one call every `interval`, each timed from when it was due (so a call that
  /// waited for an earlier one counts that wait: no coordinated omission); zero: back to
  /// back, each timed from its start.
  std::chrono::nanoseconds interval{0};
  /// Open loop: the serving process, whose CPU time over the timed calls is counted.
  pid_t peer = 0;
};

/// Round-trip times of one cell, in nanoseconds (nearest-rank percentiles).
struct Latency {
  uint64_t samples = 0;
  uint64_t minNs = 0, p50Ns = 0, p99Ns = 0, p999Ns = 0, maxNs = 0;
  /// Open loop: CPU time per call of this process (the calls; pacing spins left out) and
  /// of the serving one (all its threads), over the timed calls; and the calls per
  /// second achieved (below 1/interval when the system could not keep up).
  double clientCpuNs = 0, serverCpuNs = 0, achievedPerSecond = 0;
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

/// CPU time all threads of process `pid` have run so far, in nanoseconds
/// (/proc/<pid>/task/*/schedstat). Throws BenchError when it cannot be read.
uint64_t processCpuNs(pid_t pid);

/// Waits until `due`: sleeps (clock_nanosleep) to kPaceSpin before it, then spins. Returns
/// how long it spun (CPU time that pacing, not the call, took).
std::chrono::nanoseconds paceUntil(Clock::time_point due);
inline constexpr auto kPaceSpin = std::chrono::microseconds(30);

namespace detail {
/// measureLatency's open loop: calls due every b.interval, timed from when each was due.
template <typename RoundTrip, typename Prepare>
Latency openLoop(RoundTrip& roundTrip, const Budget& b, std::span<uint64_t> samples,
                 Prepare& prepare) {
  // Warm-up at the same pace, so the spin limits and caches have seen this traffic.
  // A system slower than the pace falls behind: it is stopped a little after its window
  // (`grace`), so the cell keeps to its budget; achievedPerSecond tells.
  const auto grace = std::min<Clock::duration>(b.measure / 4, std::chrono::seconds(1));
  auto next = Clock::now() + b.interval;
  const auto warmEnd = next + b.warmup;
  for (uint64_t i = 0; i < b.warmupIterations && next < warmEnd && Clock::now() < warmEnd + grace;
       ++i, next += b.interval) {
    prepare();
    (void)paceUntil(next);
    roundTrip();
  }
  const size_t limit = std::min<uint64_t>(b.maxIterations, samples.size());
  const pid_t self = ::getpid();
  std::chrono::nanoseconds paced{0};
  next = std::max(next, Clock::now() + b.interval);
  const auto start = next, end = start + b.measure;
  const uint64_t cpuClient0 = processCpuNs(self), cpuServer0 = b.peer ? processCpuNs(b.peer) : 0;
  size_t n = 0;
  Clock::time_point done{};
  while (n < limit && next < end && (n == 0 || done < end + grace)) {
    prepare();
    paced += paceUntil(next);
    roundTrip();
    done = Clock::now();
    samples[n++] = static_cast<uint64_t>((done - next).count());
    next += b.interval;
  }
  const double cpuClient = static_cast<double>(processCpuNs(self) - cpuClient0);
  const double cpuServer = b.peer ? static_cast<double>(processCpuNs(b.peer) - cpuServer0) : 0;
  Latency l = summarizeLatency(samples.first(n));
  if (n) {
    l.clientCpuNs = std::max(0.0, cpuClient - static_cast<double>(paced.count())) /
                    static_cast<double>(n);
    l.serverCpuNs = cpuServer / static_cast<double>(n);
    l.achievedPerSecond = static_cast<double>(n) / std::chrono::duration<double>(done - start).count();
  }
  return l;
}
}  // namespace detail

/// Warm-up, then timed round trips: `roundTrip()` until the budget's time or count runs
/// out, each timed with one steady_clock reading on each side (open loop, with
/// b.interval set: see detail::openLoop). A template, so every system
/// is timed by the same inlined code. `samples` bounds the count too and must be
/// pre-touched. `prepare()` runs before each round trip, outside the timed part.
template <typename RoundTrip, typename Prepare = void (*)()>
Latency measureLatency(
    RoundTrip&& roundTrip, const Budget& b, std::span<uint64_t> samples,
    Prepare&& prepare = [] {}) {
  if (b.interval.count() > 0) return detail::openLoop(roundTrip, b, samples, prepare);
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

/// The throughput loop of every stream cell: `send(i)` for message i until `duration` has
/// passed (the clock read every 16 sends) or a count bound (64 GiB of payloads, at least
/// 1000), then `finish(sent)`, which returns once the receiver has every message and
/// checks that it has. The time runs from the first send to finish's return.
template <typename Send, typename Finish>
Rate streamFor(std::chrono::nanoseconds duration, size_t bytes, Send&& send, Finish&& finish) {
  const uint64_t maxMessages = std::max<uint64_t>(1000, (uint64_t{64} << 30) / (bytes + 64));
  uint64_t sent = 0;
  const auto start = Clock::now(), end = start + duration;
  while (sent < maxMessages) {
    send(sent);
    if ((++sent & 15) == 0 && Clock::now() >= end) break;
  }
  finish(sent);
  return rateOf(sent, std::chrono::duration<double>(Clock::now() - start).count(), bytes);
}

/// Deadline for a wait inside a cell: the cell's own bound plus room for a stall report.
inline Deadline cellDeadline(std::chrono::nanoseconds cellTime) {
  return Clock::now() + cellTime + kStallTimeout;
}

}  // namespace zcrpc::bench
