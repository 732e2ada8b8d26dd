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

IncomingMessage::IncomingMessage(IncomingMessage&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), slot_(other.slot_) {
  other.reader_.reset();
}

IncomingMessage& IncomingMessage::operator=(IncomingMessage&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = std::exchange(other.owner_, nullptr);
    slot_ = other.slot_;
    other.reader_.reset();
  }
  return *this;
}

capnp::MessageReader& IncomingMessage::reader() {
  if (!owner_) throw InvalidArgument("IncomingMessage has no message (released or moved from)");
  if (!reader_) {
    const ParsedFrame& f = frame();
    const ReaderLimits& l = owner_->readerLimits();
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = l.traversalLimitWords;
    opts.nestingLimit = l.nestingLimit;
    reader_.emplace(f, opts);
  }
  return *reader_;
}

void IncomingMessage::releaseHeld() noexcept {
  reader_.reset();
  std::exchange(owner_, nullptr)->releaseLease(slot_);
}

}  // namespace zcrpc
