// Answers that found no room in the peer's memory: built in heap memory, kept flattened
// in arrival order, and moved into transport memory as room appears.
#pragma once

#include <cstdint>
#include <deque>

#include <kj/array.h>

#include "message/heap_segments.h"
#include "zcrpc/transport.h"

namespace zcrpc {

/// The answer backlog of one connection. A connection whose peer does not read its
/// answers opens each new answer here (open()) instead of waiting for room: the handler
/// fills it exactly as it would transport memory; push() then flattens it into the queue,
/// and drain() copies queued answers, oldest first, into transport memory once the peer
/// has made room. Only answers that found no room pay that copy.
///
/// One answer is open here at a time. Threads: the connection's polling thread only.
class __attribute__((visibility("hidden"))) AnswerBacklog final {
 public:
  bool empty() const noexcept { return queue_.empty(); }

  /// Opens `msg` with a first segment of `words` words in heap memory; the message may
  /// grow up to `maxMessageBytes` (then InvalidArgument).
  void open(OutgoingMessage& msg, uint32_t words, uint64_t maxMessageBytes) {
    spill_.open(msg, words, maxMessageBytes);
  }
  /// True when `msg` was opened by open() and not pushed yet.
  bool holds(const OutgoingMessage& msg) const noexcept { return spill_.holds(msg); }
  /// Queues the open answer `msg` (its header's kind and callId are kept) and marks it
  /// sent.
  void push(OutgoingMessage& msg);
  /// Moves queued answers, oldest first, into `connection` as room appears; returns how
  /// many went. Sets `disconnected` (and drops the queue) when the connection is gone.
  size_t drain(Connection& connection, bool& disconnected);

 private:
  /// Heap memory for the one answer being built here.
  class SpillSource final : public SegmentSource {
   public:
    void open(OutgoingMessage& msg, uint32_t words, uint64_t maxMessageBytes);
    bool holds(const OutgoingMessage& msg) const noexcept { return open_ == &msg; }
    /// The answer went to the queue: its memory stays until the next open or reset.
    void sent() noexcept { open_ = nullptr; }
    void reset() noexcept {
      segments_.reset(0);
      open_ = nullptr;
    }

    kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override;
    void abandon() noexcept override { reset(); }

   private:
    FrameHeader header_{};
    HeapSegments segments_;
    const OutgoingMessage* open_ = nullptr;
  };

  /// An answer waiting for room, flattened (capnp::messageToFlatArray).
  struct Queued {
    uint8_t kind;
    uint64_t callId;
    kj::Array<capnp::word> flat;
  };

  SpillSource spill_;
  std::deque<Queued> queue_;
};

}  // namespace zcrpc
