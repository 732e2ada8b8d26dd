#include "zcrpc/message.h"

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

void IncomingMessage::releaseHeld() noexcept {
  reader_.reset();
  std::exchange(owner_, nullptr)->releaseLease(slot_);
}

}  // namespace zcrpc
