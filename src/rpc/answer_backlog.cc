#include "rpc/answer_backlog.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <capnp/serialize.h>
#include <kj/common.h>

namespace zcrpc {

void AnswerBacklog::SpillSource::open(OutgoingMessage& msg, uint32_t words,
                                      uint64_t maxMessageBytes) {
  chunks_.clear();
  header_ = FrameHeader{};
  allocated_ = 0;
  max_ = maxMessageBytes;
  open_ = &msg;
  msg.open(*this, header_, take(words));
}

kj::ArrayPtr<capnp::word> AnswerBacklog::SpillSource::allocateMore(uint32_t minWords) {
  return take(std::max<uint64_t>(minWords, allocated_ / 8));
}

kj::ArrayPtr<capnp::word> AnswerBacklog::SpillSource::take(uint64_t words) {
  if ((allocated_ + words) * 8 > max_) {
    if ((allocated_ + 1) * 8 > max_ || words == 0)
      throw InvalidArgument("answer exceeds the maximum message size " + std::to_string(max_));
    words = max_ / 8 - allocated_;
  }
  auto chunk = kj::heapArray<capnp::word>(words);
  std::memset(chunk.begin(), 0, words * sizeof(capnp::word));
  allocated_ += words;
  auto out = chunk.asPtr();
  chunks_.push_back(std::move(chunk));
  return out;
}

void AnswerBacklog::push(OutgoingMessage& msg) {
  const FrameHeader& h = msg.header();
  queue_.push_back({h.kind, h.callId, capnp::messageToFlatArray(msg.segmentsForSend())});
  msg.markSent();
  spill_.sent();
}

size_t AnswerBacklog::drain(Connection& connection, bool& disconnected) {
  size_t n = 0;
  while (!queue_.empty() && !disconnected) {
    Queued& q = queue_.front();
    OutgoingMessage out;
    Status s = connection.tryStartMessage(out, static_cast<uint32_t>(q.flat.size()));
    if (s == Status::kWouldBlock) break;
    if (s != Status::kOk) {
      disconnected = true;
      break;
    }
    capnp::ReaderOptions options;
    options.traversalLimitInWords = kj::maxValue;  // our own handler's answer
    options.nestingLimit = 1024;
    capnp::FlatArrayMessageReader reader(q.flat, options);
    out.getRoot<capnp::AnyPointer>().set(reader.getRoot<capnp::AnyPointer>());
    out.header().kind = q.kind;
    out.header().callId = q.callId;
    (void)connection.send(out, false);
    queue_.pop_front();
    ++n;
  }
  if (disconnected) queue_.clear();
  if (queue_.empty()) spill_.reset();
  return n;
}

}  // namespace zcrpc
