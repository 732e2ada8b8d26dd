// zcrpc — call metrics per connection and per method: calls, errors by kind, bytes and
// log-linear latency histograms, written on the fast path without locks or allocation.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include "zcrpc/error.h"

namespace zcrpc {

/// Timestamps for the fast path: the CPU's time-stamp counter where there is one (x86:
/// invariant TSC, synchronised across cores on every CPU this library targets), else
/// steady_clock nanoseconds. Converted to time only when metrics are exported.
namespace ticks {
inline uint64_t now() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#else
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}
/// Nanoseconds per tick, measured once against steady_clock (the first call spins for
/// about 10 ms; later calls return the cached value). Thread-safe.
double nanosPerTick() noexcept;
/// `t` ticks in nanoseconds.
inline double toNanos(uint64_t t) noexcept { return static_cast<double>(t) * nanosPerTick(); }
}  // namespace ticks

/// Counts of samples in log-linear buckets: values below 8 exactly, above that 8
/// sub-buckets per power of two (a bucket is at most 12.5 % of its value wide), up to
/// 2^48 (values beyond land in the last bucket). Samples are ticks (see `ticks`).
///
/// Threads: record() from one writer thread at a time (no read-modify-write: each counter
/// is a relaxed load and a relaxed store, safe because nobody else writes it); any thread
/// may read concurrently (relaxed loads: a snapshot may be a few samples behind and its
/// parts need not agree exactly with each other).
class LatencyHistogram final {
 public:
  static constexpr unsigned kSubBits = 3;
  static constexpr uint64_t kSubBuckets = uint64_t{1} << kSubBits;
  static constexpr unsigned kMaxExponent = 47;
  static constexpr size_t kBuckets = kSubBuckets + (kMaxExponent - kSubBits + 1) * kSubBuckets;
  static_assert(kBuckets == 368);

  static constexpr size_t bucketOf(uint64_t v) noexcept {
    if (v < kSubBuckets) return static_cast<size_t>(v);
    const unsigned e = 63u - static_cast<unsigned>(std::countl_zero(v));  // >= kSubBits
    if (e > kMaxExponent) return kBuckets - 1;
    const uint64_t sub = (v >> (e - kSubBits)) & (kSubBuckets - 1);
    return static_cast<size_t>(kSubBuckets + (e - kSubBits) * kSubBuckets + sub);
  }
  /// Smallest value of bucket `b`.
  static constexpr uint64_t bucketLow(size_t b) noexcept {
    if (b < kSubBuckets) return b;
    const uint64_t e = (b - kSubBuckets) / kSubBuckets + kSubBits;
    const uint64_t sub = (b - kSubBuckets) % kSubBuckets;
    return (kSubBuckets + sub) << (e - kSubBits);
  }
  /// Largest value of bucket `b` (the last bucket also holds everything beyond).
  static constexpr uint64_t bucketHigh(size_t b) noexcept {
    if (b < kSubBuckets) return b;
    const uint64_t e = (b - kSubBuckets) / kSubBuckets + kSubBits;
    return bucketLow(b) + (uint64_t{1} << (e - kSubBits)) - 1;
  }

  /// Writer thread only.
  void record(uint64_t v) noexcept {
    bump(counts_[bucketOf(v)], 1);
    bump(sum_, v);
    // Single writer: plain compare, then a relaxed store.
    if (v > max_.load(std::memory_order_relaxed)) max_.store(v, std::memory_order_relaxed);
    if (v < min_.load(std::memory_order_relaxed)) min_.store(v, std::memory_order_relaxed);
  }

  uint64_t count(size_t bucket) const noexcept {
    return counts_[bucket].load(std::memory_order_relaxed);  // pairs with record()'s store
  }
  uint64_t sum() const noexcept { return sum_.load(std::memory_order_relaxed); }
  uint64_t max() const noexcept { return max_.load(std::memory_order_relaxed); }
  uint64_t min() const noexcept { return min_.load(std::memory_order_relaxed); }

  /// Adds `n` to a single-writer counter. Writer thread only.
  static void bump(std::atomic<uint64_t>& c, uint64_t n) noexcept {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> sum_{0};
  std::atomic<uint64_t> max_{0};
  std::atomic<uint64_t> min_{UINT64_MAX};
};

/// A copy of a histogram, with the tick length of the process that recorded it, so its
/// percentiles come out in nanoseconds. Plain value; any thread.
struct LatencySnapshot {
  std::vector<uint64_t> counts;  ///< LatencyHistogram::kBuckets entries (or empty: no samples)
  uint64_t sumTicks = 0;
  uint64_t minTicks = 0;
  uint64_t maxTicks = 0;
  double nanosPerTick = 1.0;

  uint64_t count() const noexcept;
  /// Adds `other`'s samples (which must use the same tick length, e.g. from this process).
  void merge(const LatencySnapshot& other);
  /// The value below which the fraction `q` (0 < q <= 1) of the samples lie, in
  /// nanoseconds: the middle of the bucket holding that sample, clamped to [min, max].
  /// 0 without samples.
  double percentileNanos(double q) const noexcept;
  double meanNanos() const noexcept;
  double minNanos() const noexcept { return count() ? static_cast<double>(minTicks) * nanosPerTick : 0; }
  double maxNanos() const noexcept { return static_cast<double>(maxTicks) * nanosPerTick; }
};

/// Id of zcrpc's admin interface `zcrpc.admin.Admin` (schemas/admin.capnp), which a
/// Server answers after enableStats(). Method 0: stats.
inline constexpr uint64_t kAdminInterfaceId = 0xbd9354d1ce2e6338ull;

inline constexpr size_t kErrorKinds = 9;  ///< ErrorKind values 1..8, index 0 unused

/// Plain copy of one method's counters. Any thread.
struct MethodSnapshot {
  uint64_t interfaceId = 0;
  uint16_t methodId = 0;
  /// "Interface.method" when known (generated stubs and services), else empty.
  std::string name;
  uint64_t calls = 0;  ///< requests and one-way messages sent (client) or dispatched (server)
  std::array<uint64_t, kErrorKinds> errors{};  ///< by ErrorKind value
  /// Cap'n Proto payload bytes: the segments as received, with data gathered into them at
  /// send (OutgoingMessage::referenceData over tcp); frame headers and tables not counted.
  uint64_t requestBytes = 0;
  uint64_t responseBytes = 0;
  /// Client: round trip from send to the call's end. Server: from dispatch until the
  /// answer was handed to the transport (a deferred call: its completion). Both sides
  /// charge a call after sending, off the round trip's critical path, so the server's
  /// counters may trail what a caller has already received by a moment.
  LatencySnapshot latency;

  /// Every call that did not end with an answer, whatever the kind, including the calls the
  /// caller gave up on (errorsOf kCancelled and kDeadlineExceeded), which zcrpc-stat shows
  /// apart from failures. A server counts a deferred call whose client cancelled it (or let
  /// its deadline pass) before it was answered as kCancelled, however the handler ended it.
  uint64_t errorCount() const noexcept;
  uint64_t errorsOf(ErrorKind kind) const noexcept { return errors[static_cast<size_t>(kind)]; }
  void merge(const MethodSnapshot& other);
};

enum class MetricsSide : uint8_t { kClient, kServer };

/// Plain copy of one connection's counters. Any thread.
struct ConnectionSnapshot {
  uint64_t id = 0;  ///< unique in this process
  std::string endpoint;
  MetricsSide side = MetricsSide::kClient;
  bool open = true;
  std::chrono::nanoseconds age{0};  ///< since the connection's metrics were created
  std::vector<MethodSnapshot> methods;  ///< in first-use order
  /// Sum over all methods (interfaceId and methodId 0).
  MethodSnapshot totals() const;
};

/// Live counters of one method on one connection. Written by the connection's one thread
/// (the Channel's, or the server worker's that owns the connection); read from anywhere.
class MethodMetrics final {
 public:
  /// `name`: "Interface.method" or empty; static storage (see RawRequest).
  MethodMetrics(uint64_t interfaceId, uint16_t methodId, std::string_view name = {}) noexcept
      : interfaceId_(interfaceId), methodId_(methodId), name_(name) {}
  uint64_t interfaceId() const noexcept { return interfaceId_; }
  uint16_t methodId() const noexcept { return methodId_; }
  std::string_view name() const noexcept { return name_; }

  // Writer thread only.
  void countCall(uint64_t requestBytes) noexcept {
    LatencyHistogram::bump(calls_, 1);
    LatencyHistogram::bump(requestBytes_, requestBytes);
  }
  void countResponse(uint64_t bytes) noexcept { LatencyHistogram::bump(responseBytes_, bytes); }
  void countError(ErrorKind kind) noexcept {
    auto k = static_cast<size_t>(kind);
    LatencyHistogram::bump(errors_[k < kErrorKinds ? k : 0], 1);
  }
  void recordLatency(uint64_t ticks) noexcept { latency_.record(ticks); }

  /// Any thread.
  MethodSnapshot snapshot() const;

 private:
  const uint64_t interfaceId_;
  const uint16_t methodId_;
  const std::string_view name_;
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> requestBytes_{0};
  std::atomic<uint64_t> responseBytes_{0};
  std::array<std::atomic<uint64_t>, kErrorKinds> errors_{};
  LatencyHistogram latency_;
};

/// Counters of one connection: a fixed open-addressing table of methods, allocated with
/// the connection; a method's counters are allocated on its first call (the only
/// allocation metrics ever make), the last method used is found without hashing.
/// Methods beyond kMaxMethods share one overflow entry (interface 0, method 0xffff).
///
/// Threads: method() from the writer thread only; snapshot() from any thread. Shared
/// ownership lets a stats reader finish with a connection that has just closed.
class ConnectionMetrics final {
 public:
  static constexpr size_t kMaxMethods = 32;
  static constexpr uint16_t kOverflowMethod = 0xffff;

  ConnectionMetrics(std::string endpoint, MetricsSide side);
  ~ConnectionMetrics();
  ConnectionMetrics(const ConnectionMetrics&) = delete;
  ConnectionMetrics& operator=(const ConnectionMetrics&) = delete;

  /// The counters of (interfaceId, methodId), named `name` ("Interface.method", static
  /// storage; empty: unnamed) when this call creates them. Writer thread only.
  MethodMetrics& method(uint64_t interfaceId, uint16_t methodId, std::string_view name = {}) {
    if (last_ && last_->interfaceId() == interfaceId && last_->methodId() == methodId) [[likely]]
      return *last_;
    return lookup(interfaceId, methodId, name);
  }

  uint64_t id() const noexcept { return id_; }
  const std::string& endpoint() const noexcept { return endpoint_; }
  MetricsSide side() const noexcept { return side_; }
  /// Marks the connection closed (shown in snapshots). Any thread.
  void markClosed() noexcept { open_.store(false, std::memory_order_relaxed); }

  /// Any thread.
  ConnectionSnapshot snapshot() const;

 private:
  MethodMetrics& lookup(uint64_t interfaceId, uint16_t methodId, std::string_view name);

  const uint64_t id_;
  const std::string endpoint_;
  const MetricsSide side_;
  const std::chrono::steady_clock::time_point created_;
  std::atomic<bool> open_{true};
  MethodMetrics* last_ = nullptr;  // writer's cache; borrows from owned_
  /// Published entries (first-use order); the writer stores each with release after
  /// constructing it, readers load with acquire (pairs with that store).
  std::array<std::atomic<MethodMetrics*>, kMaxMethods + 1> order_{};
  std::atomic<size_t> used_{0};
  /// Hash slots: index into order_ + 1 (0: empty). Writer thread only.
  std::array<uint8_t, 2 * kMaxMethods> slots_{};
  std::array<std::unique_ptr<MethodMetrics>, kMaxMethods + 1> owned_;
};

/// Metrics of a whole server (Server::stats()): every open connection's, and per-method
/// totals over all connections, closed ones included. Plain value; any thread.
struct ServerStats {
  std::vector<std::string> endpoints;
  std::chrono::nanoseconds uptime{0};
  uint64_t connectionsOpened = 0;
  uint64_t connectionsClosed = 0;
  std::vector<ConnectionSnapshot> connections;  ///< open ones
  /// Per method over every connection, open and closed.
  std::vector<MethodSnapshot> methods;
};

/// The server's list of connection metrics. Threads: any (a mutex guards the list; it is
/// taken when a connection opens or closes and when a snapshot is taken, never per call).
class MetricsRegistry final {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;
  /// A new connection's counters, listed until retire().
  std::shared_ptr<ConnectionMetrics> open(std::string endpoint, MetricsSide side);
  /// Folds a closed connection's counters into the totals and unlists it.
  void retire(const std::shared_ptr<ConnectionMetrics>& metrics);
  ServerStats snapshot() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace zcrpc
