// zcrpc — Cap'n Proto's stream framing (serialize.h: segment table, then the segments) over
// a socket, as a capnp::MessageStream that TwoPartyVatNetwork reads and writes.
//
// Hand-written although kj has one (capnp::AsyncIoMessageStream over kj::AsyncIoStream):
// that one reads a message in two or three read() calls (first word, rest of the table,
// segments) through kj's event port, and writes each message with its own promise chain.
// This one is driven by its owner's poll: one read() takes whatever the socket holds
// (often several messages), messages are read in place where they were received, and
// small outgoing messages collect in one buffer that the owner writes with one send() per
// batch (large ones go to the kernel straight from their segments with one writev).
#pragma once

#include <capnp/serialize-async.h>
#include <kj/async.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "transport/tcp/stream.h"

#pragma GCC visibility push(hidden)
namespace zcrpc::compat {

/// What a stream accepts from its peer and keeps for it.
struct StreamLimits {
  uint64_t maxMessageBytes = 64 << 20;  ///< segment table + segments of one message
  /// Cap'n Proto's own readers refuse more segments than this (capnp/serialize.c++).
  uint32_t maxSegments = 512;
};

/// Received bytes. Readers of messages received into a chunk keep it alive (the count is
/// atomic: a lease built over a message may be released on any thread).
struct InputChunk {
  explicit InputChunk(size_t words);
  kj::Array<capnp::word> words;
};
using ChunkRef = std::shared_ptr<InputChunk>;

/// One received message, read where it lies in its chunk.
class ReceivedMessage final : public capnp::MessageReader {
 public:
  ReceivedMessage(ChunkRef chunk, std::vector<kj::ArrayPtr<const capnp::word>> segments,
                  const capnp::ReaderOptions& options)
      : MessageReader(options), chunk_(std::move(chunk)), segments_(std::move(segments)) {}
  kj::ArrayPtr<const capnp::word> getSegment(capnp::uint id) override {
    return id < segments_.size() ? segments_[id] : nullptr;
  }

 private:
  ChunkRef chunk_;
  std::vector<kj::ArrayPtr<const capnp::word>> segments_;
};

/// Cap'n Proto messages over one connected, non-blocking stream socket (through a
/// tcp::ByteStream, so a TLS layer can sit under it as under a tcp connection).
///
/// The owner drives it inside its connection's KJ event loop: readSome() when the socket may
/// have bytes (it completes the read TwoPartyVatNetwork waits for), flush() to write what
/// writeMessage() buffered. A peer's malformed framing (too many segments, a message over
/// the limit) fails the pending read with an exception naming the cause, which makes the
/// RPC system abort the connection; `failure()` keeps the text.
///
/// Threads: one at a time, inside the owner's event loop scope. Lifetime: outlives the
/// TwoPartyVatNetwork built on it; messages it returned keep their chunk.
class SocketMessageStream final : public capnp::MessageStream {
 public:
  SocketMessageStream(std::unique_ptr<tcp::ByteStream> stream, StreamLimits limits);
  ~SocketMessageStream() noexcept(false);

  int fd() const noexcept { return stream_->fd(); }

  /// What one readSome() found.
  enum class ReadResult : uint8_t {
    kProgress,    ///< bytes arrived
    kWouldBlock,  ///< nothing to read now
    kEnded,       ///< end of stream (the peer closed), or the stream failed: see failure()
  };
  /// Reads what the socket holds (a few reads at most) and completes the pending read when
  /// a whole message is there.
  ReadResult readSome();
  /// True when a whole message waits in the buffer (the next read completes at once).
  bool messageBuffered() const noexcept;
  bool ended() const noexcept { return ended_; }

  /// Writes buffered output; false when the stream failed (see failure()).
  bool flush();
  /// Output the kernel has not taken yet (a TLS layer's counts as one byte: it has some).
  size_t pendingOutput() const noexcept {
    return out_.size() - outBegin_ + (stream_->hasPendingOutput() ? 1 : 0);
  }
  /// Bytes received but not read yet in the layer under this stream (TLS records): the
  /// socket may not become readable for them, so do not sleep on it.
  bool inputBuffered() const noexcept { return stream_->hasBufferedInput(); }
  /// Why the stream failed or the peer was refused (empty while it is fine).
  const std::string& failure() const noexcept { return failure_; }
  /// The reason of an Abort message (rpc.capnp) the RPC system sent (it found the peer
  /// breaking the protocol), or received (the peer gave up on us); empty when none.
  const std::string& sentAbort() const noexcept { return sentAbort_; }
  /// The peer broke the framing's rules or the limits (as opposed to going away): the
  /// failure() or sentAbort() is its fault.
  bool peerBrokeRules() const noexcept { return brokeRules_ || !sentAbort_.empty(); }
  const std::string& receivedAbort() const noexcept { return receivedAbort_; }

  // capnp::MessageStream
  kj::Promise<kj::Maybe<capnp::MessageReaderAndFds>> tryReadMessage(
      kj::ArrayPtr<kj::AutoCloseFd> fdSpace, capnp::ReaderOptions options,
      kj::ArrayPtr<capnp::word> scratchSpace) override;
  kj::Promise<void> writeMessage(kj::ArrayPtr<const int> fds,
                                 kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) override;
  kj::Promise<void> writeMessages(
      kj::ArrayPtr<kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>> messages) override;
  kj::Maybe<int> getSendBufferSize() override;
  kj::Promise<void> end() override;

  /// Messages below this size are copied into the output buffer and written together at
  /// flush(); larger ones go to the kernel from their segments at once.
  static constexpr size_t kCoalesceBelow = 16 << 10;
  /// Room of a fresh input chunk (a larger message gets a chunk of its own size).
  static constexpr size_t kChunkBytes = 64 << 10;

 private:
  /// The size in bytes of the message at begin_ once its segment table has arrived (0
  /// before), or throws std::runtime_error naming what is wrong with its framing.
  size_t messageBytes() const;
  /// messageBytes() when all of the message has arrived, else 0.
  size_t wholeMessageBytes() const;
  /// Takes the whole message at begin_ (wholeMessageBytes() > 0).
  kj::Own<capnp::MessageReader> takeMessage(size_t bytes, const capnp::ReaderOptions& options);
  /// Room to read into, for a message of `need` bytes (0: unknown) starting at begin_.
  void makeRoom(size_t need);
  /// Completes the waiting read if there is a message, an end or an error for it.
  void deliver();
  void fail(std::string why);
  /// A write failed with `err`: a failure, unless the peer's end of stream came first.
  bool writeFailed(int err);
  /// Writes `iov` now; keeps (copies) what the kernel did not take. False when failed.
  bool writeOrKeep(const iovec* iov, size_t count, size_t total);

  std::unique_ptr<tcp::ByteStream> stream_;
  StreamLimits limits_;
  ChunkRef chunk_;
  size_t begin_ = 0;  // bytes of chunk_ consumed
  size_t end_ = 0;    // bytes of chunk_ received
  bool ended_ = false;         // end of stream read, or failed
  bool endDelivered_ = false;  // ... and the RPC system was told
  bool writeClosed_ = false;   // writes failed after the end: output is dropped
  bool brokeRules_ = false;    // the failure is the peer's framing (or size)
  std::string failure_;
  kj::Own<kj::PromiseFulfiller<kj::Maybe<capnp::MessageReaderAndFds>>> waiting_;  // a read waits
  capnp::ReaderOptions waitingOptions_;
  std::string sentAbort_;
  std::string receivedAbort_;
  std::vector<kj::byte> out_;  // output the kernel has not taken, from outBegin_
  size_t outBegin_ = 0;
};

}  // namespace zcrpc::compat
#pragma GCC visibility pop
