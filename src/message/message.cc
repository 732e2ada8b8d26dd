#include "zcrpc/message.h"

#include <cstring>
#include <utility>

#include "zcrpc/error.h"

namespace zcrpc {

OutgoingMessage::~OutgoingMessage() noexcept(false) {
  if (source_) source_->abandon();
}

kj::ArrayPtr<capnp::word> OutgoingMessage::allocateSegment(capnp::uint minimumSize) {
  if (!source_) throw InvalidArgument("OutgoingMessage used before Connection::tryStartMessage or after send");
  if (!firstTaken_) {
    firstTaken_ = true;
    if (first_.size() >= minimumSize) return first_;
    // capnp asked for more than the reserved first segment: leave it empty and grow.
    auto more = source_->allocateMore(minimumSize);
    return more;
  }
  return source_->allocateMore(minimumSize);
}

capnp::MessageReader& IncomingMessage::makeReader() {
  if (!owner_) throw InvalidArgument("IncomingMessage has no message (released or moved from)");
  const ReaderLimits& l = owner_->readerLimits();
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = l.traversalLimitWords;
  opts.nestingLimit = l.nestingLimit;
  return reader_.emplace(frame(), opts);
}

namespace {

/// A received message copied out of transport memory: its own segments and frame, freed
/// with the lease.
class HeapLease final : public LeaseOwner {
 public:
  HeapLease(const ParsedFrame& frame, const ReaderLimits& limits)
      : frame_(frame), limits_(limits), words_(kj::heapArray<capnp::word>(frame.payloadBytes / 8)) {
    capnp::word* at = words_.begin();
    for (size_t i = 0; i < frame_.segmentCount; ++i) {
      const auto& seg = frame.segments[i];
      if (seg.size()) std::memcpy(at, seg.begin(), seg.size() * sizeof(capnp::word));
      frame_.segments[i] = kj::ArrayPtr<const capnp::word>(at, seg.size());
      at += seg.size();
    }
  }
  const ParsedFrame& leasedFrame(uint32_t) const noexcept override { return frame_; }
  const ReaderLimits& readerLimits() const noexcept override { return limits_; }
  void releaseLease(uint32_t) noexcept override { delete this; }
  bool heapCopy() const noexcept override { return true; }

 private:
  ~HeapLease() = default;
  ParsedFrame frame_;
  ReaderLimits limits_;
  kj::Array<capnp::word> words_;
};

}  // namespace

void IncomingMessage::moveToHeap() {
  if (!owner_ || owner_->heapCopy()) return;
  auto* copy = new HeapLease(frame(), owner_->readerLimits());
  release();
  owner_ = copy;
  slot_ = 0;
}

void IncomingMessage::releaseHeld() noexcept {
  reader_.reset();
  std::exchange(owner_, nullptr)->releaseLease(slot_);
}

}  // namespace zcrpc
