// zcrpc-bench — the loops of RPC mode: echo round trips and pipelined calls through the
// generated Echo stubs, the service that answers them, and the raw TCP ping-pong that is
// the reference for tcp://.
//
// Each measuring loop is bounded by an iteration count and by time; each waiting loop by
// a deadline. Failures throw BenchError naming what went wrong.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "cells.h"
#include "common.h"
#include "echo.capnp.zcrpc.h"

namespace zcrpc::bench {

/// Pipelined calls: one thread keeps `window` echo calls outstanding with callAsync().
struct Pipelined {
  uint64_t calls = 0;         ///< calls answered (each checked) in the measured interval
  double seconds = 0;         ///< from the first call to the last answer (the window drained)
  double callsPerSecond = 0;  ///< calls / seconds: what the run as a whole achieved
  double bytesPerSecond = 0;  ///< payload bytes each way, at callsPerSecond
  /// Calls per second over the run less its stalls: passes of the client's loop that took
  /// 2 ms or more (normally a few microseconds), in which one of the two processes did not
  /// run because other load took its CPU. Close to what an undisturbed host sustains; the
  /// calls that finished in a stalled pass are left out too. 0 if every pass stalled.
  double stallFreeCallsPerSecond = 0;
  double stalledFraction = 0;  ///< share of the run's time in stalled passes
  uint32_t window = 0;
  uint64_t preemptions = 0;  ///< involuntary context switches of both processes in the cell
};

/// Words of the first segment of an echo request or response with `payloadBytes` of data:
/// root pointer, the params/results struct (one pointer), the data rounded up to words.
constexpr uint32_t echoWords(size_t payloadBytes) {
  return static_cast<uint32_t>(4 + (payloadBytes + 7) / 8);
}

/// Over tcp, payloads from this size on travel by reference (OutgoingMessage::referenceData)
/// unless --copy-payload: the client's request points at its payload buffer and the
/// server's answer at the request it received, as the raw TCP echo sends back the buffer it
/// read into. That is how a zcrpc user sends a large blob over tcp: the kernel takes it
/// straight from that memory. Smaller payloads are copied into the message, and so are all
/// over shm (rpc_mode.cc says why).
constexpr size_t kByReferenceBytes = 16 << 10;

/// Whether a payload of `bytes` goes by reference, given the smallest size that does.
constexpr bool byReference(size_t bytes, size_t referenceFrom) { return bytes >= referenceFrom; }

/// The bench's Echo service: `echo` answers with the request's data (read in place), either
/// copied into a response built in place (the one copy an echo makes) or, from
/// `referenceFrom` bytes on, by reference to the request; `ping` and `sink` do nothing;
/// `delay` and `fail` are not used by the bench and fail. It notes the size of the largest
/// request frame it answered (header, segments and table: the bytes a stream transport
/// carries), so a raw ping-pong of the same bytes can be measured.
/// Threads: the server's worker; largestFrameBytes() from any thread.
class BenchEchoService final : public echo::EchoService {
 public:
  explicit BenchEchoService(size_t referenceFrom = kByReferenceBytes) noexcept
      : referenceFrom_(referenceFrom) {}
  void echo(EchoCall& call) override;
  void ping(PingCall& call) override;
  void sink(SinkCall& call) override;
  void delay(DelayCall& call) override;
  void fail(FailCall& call) override;

  uint64_t largestFrameBytes() const noexcept {
    return largestFrame_.load(std::memory_order_relaxed);
  }

 private:
  size_t referenceFrom_;
  std::atomic<uint64_t> largestFrame_{0};
};

/// Echo round trips through the generated stub: each request is built in place (`payload`
/// copied into its data, or referenced from `referenceFrom` bytes on; it must be
/// word-aligned), answered, its data's size and last byte checked, released.
Latency rpcPingPong(echo::EchoClient& client, std::span<const std::byte> payload,
                    size_t referenceFrom, const Budget& budget, std::span<uint64_t> samples);

/// Pipelined echo calls for `duration` (or `maxCalls`): callAsync() while fewer than `window`
/// are outstanding, then pollUntil() (which waits by the connection's wait mode); every
/// answer is checked in its callback. The client's Channel window must be >= `window`.
Pipelined rpcPipelined(echo::EchoClient& client, std::span<const std::byte> payload,
                       size_t referenceFrom, uint32_t window, std::chrono::nanoseconds duration, uint64_t maxCalls);

// ---- raw TCP: the reference for tcp:// ---------------------------------------------------

/// A TCP socket on 127.0.0.1; closes on destruction. Move-only.
class TcpSocket final {
 public:
  TcpSocket() = default;
  explicit TcpSocket(int fd) noexcept : fd_(fd) {}
  TcpSocket(TcpSocket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  TcpSocket& operator=(TcpSocket&& o) noexcept;
  ~TcpSocket();
  int fd() const noexcept { return fd_; }

  /// Listens on 127.0.0.1 on an ephemeral port; `port` receives it. Throws BenchError.
  static TcpSocket listenLoopback(uint16_t& port);
  /// The next connection on a listening socket, or throws BenchError at `deadline`.
  TcpSocket accept(Deadline deadline) const;
  /// Connects to 127.0.0.1:`port`. Throws BenchError.
  static TcpSocket connectLoopback(uint16_t port);
  /// TCP_NODELAY, and the blocking mode `mode` needs (non-blocking unless kBlocking).
  void prepare(WaitMode mode) const;

 private:
  int fd_ = -1;
};

/// Raw TCP ping-pong: writes `payload`, reads the same number of bytes back into `buffer`,
/// per round trip, waiting as `mode` says (busy-poll: spin on non-blocking recv;
/// spin-then-sleep: spin for `spinTime`, then poll(); blocking: blocking recv).
Latency rawTcpPingPong(const TcpSocket& socket, std::span<const std::byte> payload,
                       std::span<std::byte> buffer, WaitMode mode,
                       std::chrono::nanoseconds spinTime, const Budget& budget,
                       std::span<uint64_t> samples);

/// The peer's side: reads `payloadBytes` into `buffer` and writes them back, until the
/// client closes at a message boundary. Returns the number of messages echoed.
uint64_t rawTcpEcho(const TcpSocket& socket, size_t payloadBytes, std::span<std::byte> buffer,
                    WaitMode mode, std::chrono::nanoseconds spinTime, Deadline deadline);

}  // namespace zcrpc::bench
