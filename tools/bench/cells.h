// zcrpc-bench — the measurement loops: ping-pong over the floor ring and over zcrpc, the
// echo side of both, one-way streaming with batching, and memcpy bandwidth.
//
// Each measuring loop is bounded by an iteration count and by time; each waiting loop by
// a deadline. Failures throw BenchError naming what went wrong.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "common.h"
#include "raw_ring.h"
#include "zcrpc/transport.h"

namespace zcrpc::bench {

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
  uint64_t minNs = 0;
  uint64_t p50Ns = 0;
  uint64_t p99Ns = 0;
  uint64_t p999Ns = 0;
  uint64_t maxNs = 0;
  uint64_t preemptions = 0;  ///< involuntary context switches of both processes in the cell
};

/// One-way streaming result. `seconds` runs from the first message to the receiver's
/// acknowledgement that it received (and released) the last one.
struct Throughput {
  uint64_t messages = 0;
  double seconds = 0;
  double messagesPerSecond = 0;
  double bytesPerSecond = 0;  ///< payload bytes
  uint64_t preemptions = 0;   ///< involuntary context switches of both processes in the cell
};

/// Sorts `samples` and takes nearest-rank percentiles.
Latency summarizeLatency(std::span<uint64_t> samples);

/// Warm-up, then timed round trips: `roundTrip()` is called until the budget's time or
/// count runs out, each call timed with one steady_clock reading on each side. The round
/// trip is inlined (a template), so every system is timed by the same code. `samples`
/// bounds the count too and must be pre-touched (the loop only stores into it).
/// `prepare()`, if given, runs before each round trip, outside the timed part.
template <typename RoundTrip, typename Prepare = void (*)()>
Latency measureLatency(RoundTrip&& roundTrip, const Budget& b, std::span<uint64_t> samples,
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

/// Capnp words that hold a Payload with `payloadBytes` of data in one segment: root
/// pointer, the struct (two data words, one pointer), the data rounded up to words.
constexpr uint32_t payloadWords(size_t payloadBytes) {
  return static_cast<uint32_t>(4 + (payloadBytes + 7) / 8);
}

/// Sequence number of the message that ends a cell (and of the sink's acknowledgement).
inline constexpr uint64_t kStopSeq = UINT64_MAX;

// ---- measuring side -------------------------------------------------------------------

/// Floor ping-pong: sends `payload` and waits for the echo, per round trip; then the stop
/// marker. `samples` must hold `budget.maxIterations` entries (pre-touched: the loop only
/// stores into it). `watchFd`: see RawEnd::receive.
Latency floorPingPong(RawEnd& end, std::span<const std::byte> payload, const Budget& budget,
                      std::span<uint64_t> samples, int watchFd);

/// zcrpc ping-pong: each request is a bench::Payload built in place in the ring (or arena)
/// with `payload` copied into its data; the echo must carry the same seq and size back.
Latency zcrpcPingPong(Connection& conn, std::span<const std::byte> payload, const Budget& budget,
                      std::span<uint64_t> samples);

/// Cap'n Proto's own share of one echo round trip, with no transport and no second thread:
/// a `Request` built into zeroed memory (zeroed before the timed part: a transport may
/// clear memory while it waits), read back over its segments (SegmentArrayMessageReader,
/// no copy), an `Answer` built from what was read, read back and checked. The data field
/// is set but empty: moving the payload's bytes is what the floor does too, so only the
/// messages' structure is counted, the same at every payload size. Each step is one every
/// round trip of these messages takes, one after another, so this added to the floor is
/// the least a round trip of Cap'n Proto messages can take, whatever carries them.
/// Instantiated for bench::Payload both ways (messages mode) and the Echo params / results
/// (rpc mode).
template <typename Request, typename Answer>
Latency capnpWorkPingPong(const Budget& budget, std::span<uint64_t> samples);

/// One-way stream of Payload messages of `payloadBytes`, data copied from `source`
/// (rotating through it), sent with send(msg, /*flush=*/false) and flush() every `batch`.
/// Stops after `duration` or `maxMessages`, sends the stop message and waits for the
/// sink's acknowledgement, which must count every message.
Throughput zcrpcStream(Connection& conn, size_t payloadBytes, std::span<const std::byte> source,
                       uint32_t batch, std::chrono::nanoseconds duration, uint64_t maxMessages);

/// Single-core memcpy bandwidth (bytes copied per second) with `chunkBytes` copies that
/// rotate through `source` and `target`, which should be much bigger than the caches and
/// already faulted in. Runs for `duration` after a short warm-up.
double memcpyBandwidth(std::span<const std::byte> source, std::span<std::byte> target,
                       size_t chunkBytes, std::chrono::nanoseconds duration);

// ---- peer side ------------------------------------------------------------------------

/// Echoes floor messages (one memcpy from the request slot into the reply slot) until
/// the stop marker, which it echoes too. Returns the number of payload messages.
uint64_t floorEcho(RawEnd& end, Deadline deadline);

/// Echoes zcrpc Payloads until the stop message, which it echoes too: reads the request in
/// place, builds a reply of the same size in place (setData: the one copy an echo makes),
/// releases the request lease, sends. Returns the number of payload messages.
uint64_t zcrpcEcho(Connection& conn, Deadline deadline);

/// Receives, checks the sequence and size of, and releases Payloads of `payloadBytes` until
/// the stop message; then sends an acknowledgement carrying the count in `checksum`.
uint64_t zcrpcSink(Connection& conn, size_t payloadBytes, Deadline deadline);

}  // namespace zcrpc::bench
