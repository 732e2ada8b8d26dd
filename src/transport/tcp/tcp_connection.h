// zcrpc — tcp:// connection: the same frames over a byte stream.
//
// Sending (tcp_send.cc): messages are built in a per-connection send buffer (large segments
// in chunks of their own), frames queue as iovecs, and one writev() sends a batch: small
// frames are coalesced, large segments go from where they were built without a staging
// copy, and large external data (referenceExternalData) is written from the caller's
// memory, as is large data given to OutgoingMessage::referenceData, gathered into its
// field's segment.
// Receiving (tcp_receive.cc): one non-blocking read fills a per-connection receive ring
// with as many frames as have arrived; each is validated and handed out in place as a
// lease. A frame that would not fit before the end of the ring is moved to its start (only
// its first bytes have arrived by then); a frame larger than a quarter of the ring is read
// straight into a buffer of its own. The frame size limit is checked from the header,
// before anything is allocated for the frame.
#pragma once

#include <poll.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "os/os.h"
#include "os/spin.h"
#include "transport/frame_assembly.h"
#include "transport/lease_queue.h"
#include "transport/record.h"
#include "transport/tcp/stream.h"
#include "transport/waiter.h"
#include "zcrpc/tcp.h"

namespace zcrpc::tcp {

inline constexpr size_t kMaxIov = 256;
inline constexpr uint32_t kTableReserveEntries = 4;
/// External data from this size on is written from the caller's memory at send(): copying
/// it would cost more than the write that coalescing could have saved.
inline constexpr uint64_t kWriteExternalBytes = 16 << 10;
/// A segment written from the caller's memory starts this many bytes into the write, modulo
/// this, as its address does (see TcpConnection::send()).
inline constexpr uint64_t kCopyAlignment = 64;
/// A frame larger than a quarter of the ring is read into its own memory at most this
/// much per receive call, so one peer streaming a large frame cannot hold the thread that
/// serves it (a server's worker) for longer than reading this much takes (~0.1-0.3 ms).
inline constexpr uint64_t kBigReadPerCall = 1 << 20;
/// Send-buffer room kept after a frame's segments for its table and trace context.
inline constexpr uint64_t kTableRoom = kMaxSegments * sizeof(SegmentEntry) + sizeof(TraceContext);

/// A connected, handshaken tcp connection.
///
/// Threads: as Connection. The sending half's state is guarded by sendLock_, which the
/// receiving thread only try_locks (to push queued output out); the receiving half's state
/// belongs to the receiving thread, but head_, which releasing threads advance.
// Hidden: used only inside libzcrpc (calls between its members bind locally).
class __attribute__((visibility("hidden"))) TcpConnection final : public Connection,
                                                                  private SegmentSource,
                                                                  private LeaseOwner {
 public:
  /// Takes over `stream`, whose handshake is done.
  TcpConnection(std::unique_ptr<ByteStream> stream, std::string what, const ConnectionOptions& options,
                uint64_t maxMessageBytes, std::chrono::milliseconds deadPeerTimeout,
                PeerIdentity peer = {});
  ~TcpConnection() override;

  // ---- sending (tcp_send.cc) ----
  Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) override;
  Status startMessage(OutgoingMessage& msg, uint32_t words, Deadline deadline) override;
  Status send(OutgoingMessage& msg, bool flushNow) override;
  Status flush() override;

  // ---- receiving (tcp_receive.cc) ----
  Status tryReceive(IncomingMessage& out) override;
  Status receive(IncomingMessage& out, Deadline deadline) override;

  /// An epoll descriptor watching the socket: readable for incoming data or hang-up and,
  /// while frames are queued unsent, for writability, so an event loop sleeping on it
  /// also gets queued output out.
  int waitFd() const noexcept override { return epoll_.get(); }
  bool armWait() noexcept override;
  void disarmWait() noexcept override {}
  Status checkPeer() noexcept override;

  /// Sends what is queued (briefly, up to 200 ms if the peer is slow), then closes.
  void close() noexcept override;
  void closeNow() noexcept;
  std::string lastError() const override;
  std::string endpoint() const override { return what_; }
  uint64_t maxMessageBytes() const noexcept override { return maxMessage_; }
  uint32_t maxLeases() const noexcept override { return options_.maxLeases; }
  const PeerIdentity& peer() const noexcept override { return peer_; }

 private:
  struct OpenFrame {
    OutgoingMessage* msg = nullptr;
    uint64_t start = 0;  // header offset in the send buffer
    uint64_t end = 0;    // end of the last in-buffer segment
    uint64_t allocated = 0;
  };

  // SegmentSource (tcp_send.cc)
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override;
  uint64_t gathersFromBytes() const noexcept override { return kWriteExternalBytes; }
  void abandon() noexcept override;

  // LeaseOwner
  const ParsedFrame& leasedFrame(uint32_t slot) const noexcept override {
    return leases_.at(slot).frame;
  }
  const ReaderLimits& readerLimits() const noexcept override { return options_.readerLimits; }
  void releaseLease(uint32_t slot) noexcept override {
    leases_.release(slot, [&](uint64_t end) { head_.store(end, std::memory_order_release); });
  }

  // ---- send buffer (tcp_send.cc) ----

  static constexpr uint64_t kNotQueued = ~uint64_t{0};
  struct Chunk {
    std::unique_ptr<capnp::word[]> words;
    uint64_t queuedAt = kNotQueued;  // pendingBytes_ total when queued
  };

  capnp::word* newChunk(uint32_t words);
  bool roomInSendBuffer(uint64_t need);
  /// Queues bytes for writing. A range that merely lies next to the previous one in memory
  /// is joined to it unless either of them is the caller's external data, whose iovecs
  /// copyUnsentExternal() must find on their own.
  void pushIov(const void* p, uint64_t bytes, bool joinable = true);
  /// Padding (whole words) before data written from the caller's memory. The kernel copies
  /// it into its own pages, which a write fills from their start: that copy runs fastest
  /// when the source lies at the same offset within a cache line as the destination (64 KiB
  /// round trip: 0.5-9 us less, depending on where the host runs the CPUs). The data lands
  /// after what is queued, which a partial write may have left at any byte count: the
  /// padding stays whole words, as frames are, and is then only as good as it can be.
  uint64_t alignmentPadding(const void* data) const noexcept {
    const uint64_t at = pendingBytes_.load(std::memory_order_relaxed);
    return (reinterpret_cast<uintptr_t>(data) - at) & (kCopyAlignment - 1) & ~uint64_t{7};
  }
  bool ownsMemory(const capnp::word* p) const noexcept;
  /// After a write: what is still queued of the caller's external data (the kernel took
  /// only part of it) is copied into chunks, so nothing reads the caller's memory once
  /// send() returns.
  void copyUnsentExternal(size_t external);
  void writePending();

  /// Output waits: frames queued here, or bytes the stream's own layer (TLS) holds.
  bool outputWaits() const noexcept {
    return pendingBytes_.load(std::memory_order_relaxed) || (streamBuffers_ && stream_->hasPendingOutput());
  }
  /// Input waits in the stream's own layer (TLS) though the socket may not be readable.
  bool inputBuffered() const noexcept { return streamBuffers_ && stream_->hasBufferedInput(); }

  /// Receiving thread: pushes out queued frames unless the sending thread is at it.
  void flushFromReceiver() {
    if (!outputWaits() || !sendLock_.try_lock()) return;
    writePending();
    sendLock_.unlock();
  }

  // ---- receive ring (tcp_receive.cc) ----

  bool frameBuffered() const noexcept;
  /// A complete frame at parse_ (or a big frame finished), as a lease.
  Status tryFrame(IncomingMessage& out);
  /// Close with the reason a frame was refused (out of line: kept off the receive path).
  [[gnu::cold, gnu::noinline]] Status badFrameSize(uint32_t frameBytes);
  [[gnu::cold, gnu::noinline]] Status malformedFrame(const std::string& why);
  Status startBig(uint32_t frameBytes, IncomingMessage& out);
  Status continueBig(IncomingMessage& out);
  /// Reads what the kernel has into the ring. False when nothing more can be read now.
  bool readMore();
  Status drainedOrDisconnected(IncomingMessage&);

  // ---- both ----

  /// The text of a failed read or write; a kernel timeout names the dead-peer timeout.
  std::string ioError(const char* op, int err) const;
  void fault(std::string why) noexcept;
  template <typename Done>
  Status waitFor(Done done, Deadline deadline, bool forWrite);

  std::unique_ptr<ByteStream> stream_;  // every byte in and out; its fd() for polls
  const bool streamBuffers_;            // stream_->buffers(): a layer with buffers (TLS)
  const PeerIdentity peer_;
  os::Fd epoll_;
  uint32_t epollEvents_ = 0;  // receiving thread; 0: the socket is not in epoll_ yet
  std::string what_;
  ConnectionOptions options_;
  std::chrono::milliseconds deadPeerTimeout_;
  uint64_t maxMessage_;
  uint64_t maxFrame_;
  std::atomic<bool> closed_{false};
  mutable std::mutex errorMutex_;
  std::string error_;
  bool eof_ = false;
  Waiter receiveWaiter_;  // receiving thread
  Waiter sendWaiter_;     // sending thread

  // The receive ring and the send buffer, ringBytes each, in one mapping of their own: a
  // closed connection's memory goes straight back to the system (from the allocator, a
  // server with connections coming and going kept ~1 MiB per connection ever opened),
  // and pages never touched (most of both, for small messages) cost nothing.
  os::Memory buffers_;

  // receive (receiving thread; head_ also from releasing threads)
  uint64_t ringBytes_;
  uint64_t ringMask_;
  std::byte* ring_;
  uint64_t tail_ = 0;
  uint64_t parse_ = 0;
  std::atomic<uint64_t> head_{0};
  FrameAssembly big_;      // a frame larger than a quarter of the ring, as it arrives
  bool afterBig_ = false;  // the last frame was big (see readMore())
  FrameLimits limits_;

  // send (sending thread)
  uint64_t sendBytes_;
  std::byte* send_;
  uint64_t used_ = 0;
  OpenFrame open_;
  std::vector<iovec> pending_;
  std::atomic<uint64_t> pendingBytes_{0};  // read by the receiving thread
  os::SpinLock sendLock_;  // send state; the receiving thread only try_locks it
  uint64_t sentTotal_ = 0;
  std::deque<Chunk> chunks_;
  bool lastJoinable_ = true;  // pending_.back() may be extended by the next range
  struct ExternalRange {
    const std::byte* begin;
    uint64_t bytes;
  };
  // send()'s ranges in the caller's memory: external segments and referenced data.
  std::array<ExternalRange, kMaxSegments + OutgoingMessage::kMaxReferences> external_{};

  LeaseQueue leases_;
};

template <typename Done>
Status TcpConnection::waitFor(Done done, Deadline deadline, bool forWrite) {
  // The kernel wakes a thread sleeping in poll() on the socket: no announcement needed,
  // and a hang-up wakes it too.
  auto sleep = [&](Clock::duration left) {
    // Bytes the stream's layer (TLS) already holds need no sleep: the socket may be quiet.
    if (!forWrite && inputBuffered()) return false;
    short events = POLLRDHUP | (forWrite || outputWaits() ? POLLOUT : 0) | (forWrite ? 0 : POLLIN);
    os::pollOne(stream_->fd(), events,
                std::min(std::chrono::duration_cast<std::chrono::milliseconds>(left) +
                             std::chrono::milliseconds(1),
                         std::chrono::milliseconds(500)));
    return false;
  };
  auto alive = [this](bool) { return !closed_.load(std::memory_order_relaxed); };
  return (forWrite ? sendWaiter_ : receiveWaiter_).wait(done, alive, sleep, deadline);
}

}  // namespace zcrpc::tcp
