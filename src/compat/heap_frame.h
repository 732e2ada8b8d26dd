// zcrpc — zcrpc frames in heap memory, for connections whose wire is not zcrpc's own: the
// session builds its outgoing frames in them (SegmentSource), and frames made from what the
// peer sent are handed to the session as leases on them (LeaseOwner).
#pragma once

#include <capnp/any.h>
#include <capnp/capability.h>

#include <cstdint>
#include <memory>
#include <vector>

#include <kj/array.h>

#include "message/heap_segments.h"
#include "zcrpc/transport.h"

#pragma GCC visibility push(hidden)
namespace zcrpc::compat {

/// An extension area being written, word by word (capnp::word cannot be a vector's
/// element: it is neither copyable nor movable).
using RecordWords = std::vector<uint64_t>;

/// One frame in heap memory: first built through an OutgoingMessage (open()), then either
/// read by its connection (the session's outgoing frame) or sealed into a lease the session
/// receives (IncomingMessage). A sealed frame owns itself and goes when its lease is
/// released, which any thread may do.
///
/// Threads: built on one thread; its lease released on any.
class HeapFrame final : public SegmentSource, public LeaseOwner {
 public:
  /// Told when the OutgoingMessage built on an unsealed frame is dropped unsent.
  class Owner {
   public:
    virtual void abandoned(HeapFrame& frame) noexcept = 0;

   protected:
    ~Owner() = default;
  };

  /// Writes the extension records of a frame copied from a Cap'n Proto message that held
  /// capabilities (copyOf()): `found` are Cap'n Proto's, in the order the copy's capability
  /// pointers index them; the writer appends a capTable record for them to `records`.
  class CapWriter {
   public:
    virtual void writeCapTable(kj::ArrayPtr<kj::Maybe<kj::Own<capnp::ClientHook>>> found,
                               RecordWords& records) = 0;

   protected:
    ~CapWriter() = default;
  };

  /// A frame that may grow to `maxMessageBytes` (then InvalidArgument), read with `limits`.
  HeapFrame(uint64_t maxMessageBytes, const ReaderLimits& limits) noexcept : limits_(limits) {
    segments_.reset(maxMessageBytes);
  }

  /// Opens `msg` on this frame with a first segment of `words` zeroed words.
  void open(OutgoingMessage& msg, uint32_t words);
  /// `owner` learns when the message opened here is dropped unsent (it may delete the frame).
  void setOwner(Owner* owner) noexcept { owner_ = owner; }
  bool holds(OutgoingMessage& msg) const noexcept { return &msg.header() == &header_; }

  /// Hands the built frame to the session: the lease owns this object from here on.
  static IncomingMessage seal(std::unique_ptr<HeapFrame> frame, OutgoingMessage& built);

  /// A frame whose root is a copy of `root` (a Cap'n Proto struct or null), in one segment.
  /// Copies because a zcrpc frame's root is the message root, and Cap'n Proto's params and
  /// results lie inside its RPC message (rpc.capnp Payload.content). The frame carries the
  /// extension `records` (whole records, e.g. a target) and, when `root` holds
  /// capabilities, the capTable record `caps` writes for them (without a writer such a
  /// message is refused: InvalidArgument). Throws InvalidArgument when the copy exceeds
  /// `maxMessageBytes`.
  static IncomingMessage copyOf(const FrameHeader& header, capnp::AnyPointer::Reader root,
                                uint64_t maxMessageBytes, const ReaderLimits& limits,
                                CapWriter* caps = nullptr, RecordWords records = {});
  /// Appends an extension record of `type` with `payload` (padded with zeros to whole
  /// words) to `records`.
  static void appendRecord(RecordWords& records, uint16_t type, kj::ArrayPtr<const kj::byte> payload);

  /// A release frame (FrameKind::kRelease, a null root) whose releases record gives back
  /// `refs` references to export `exportId` of the session.
  static IncomingMessage release(uint32_t exportId, uint32_t refs, const ReaderLimits& limits);
  /// An error frame (FrameKind::kError) for call `callId`, as the session's own errors are.
  static IncomingMessage error(uint64_t callId, ErrorKind kind, int32_t code, const std::string& message,
                               const ReaderLimits& limits);

  // SegmentSource
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override;
  void abandon() noexcept override {
    if (owner_) owner_->abandoned(*this);
  }
  // LeaseOwner
  const ParsedFrame& leasedFrame(uint32_t) const noexcept override { return frame_; }
  const ReaderLimits& readerLimits() const noexcept override { return limits_; }
  void releaseLease(uint32_t) noexcept override { delete this; }
  bool heapCopy() const noexcept override { return true; }

 private:
  FrameHeader header_{};
  Owner* owner_ = nullptr;
  ReaderLimits limits_;
  HeapSegments segments_;
  RecordWords extensions_;  // the sealed frame's extension area (records)
  ParsedFrame frame_;                    // once sealed
};

}  // namespace zcrpc::compat
#pragma GCC visibility pop
